"""What the unit of work and the tier sources run their statements on."""

from __future__ import annotations

from typing import Any, Protocol


class Connection(Protocol):
    """An AsyncConnection in a transaction, the SQLite write thread's connection
    (finmesh.platform.storage.sqlite_thread), or CreatePayment's pre-check reads, which open a connection only
    if a statement needs one (finmesh.platform.storage.db.on_demand_reads)."""

    async def execute(self, statement: Any, parameters: Any = None, /) -> Any: ...
