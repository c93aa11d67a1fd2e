"""Identity's use cases, one module per capability: each opens its unit of work, applies the domain rules,
calls the stores and the clients, and writes outbox events. They never build protobuf: the api hands each a
function that makes the answer from the use case's result, so a stored answer is the one the caller got."""
