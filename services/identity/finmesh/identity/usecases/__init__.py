"""Identity's use cases: one module per capability; each opens its unit of work, applies the domain rules,
calls the stores and the clients, and emits outbox events. No protobuf: the api converts."""
