"""Payments persistence over SQLAlchemy Core: SQLite or PostgreSQL, same statements."""
