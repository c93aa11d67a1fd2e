"""Who the caller is and what it may do: tokens, verification keys, roles, the per-RPC access check."""
