"""Use cases: each runs inside the ledger writer against a unit of work and leaves the books balanced."""
