"""Notify's capabilities, one module each: each opens its unit of work, applies the domain rules, uses the stores
and the senders. The api/ layer only translates protobuf to these calls and their results back."""
