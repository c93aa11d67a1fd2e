"""Identity fixtures: the identity server with enforcing auth, its stand-ins and the fake registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.identity.harness import IdentityEnv, identity_env


@pytest.fixture
async def env(databases, tmp_path: Path) -> AsyncIterator[IdentityEnv]:
    async with identity_env(databases, tmp_path) as e:
        yield e
