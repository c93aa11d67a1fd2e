"""Risk's use cases, one module per capability: each opens the unit of work, applies the domain rules through the
stores and emits the outbox events."""
