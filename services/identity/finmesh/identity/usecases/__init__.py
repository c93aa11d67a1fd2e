"""Identity's use cases, one module per capability: each opens its unit of work, applies the domain rules,
calls the stores and the clients, and writes outbox events. They never build protobuf: a mutating RPC's api
hands its use case a KeyedCall (finmesh.platform.storage.idempotency) whose reply function makes the answer
from the use case's result, inside the change's transaction, so a stored answer is the one the caller got."""
