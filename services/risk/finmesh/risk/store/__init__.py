"""Risk persistence over SQLAlchemy Core: the state every replica shares (velocity, devices, incidents, rules)."""
