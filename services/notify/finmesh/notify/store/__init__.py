"""Notify persistence (SQLAlchemy Core): events, the send queue, dead letters, consent, webhooks, complaints."""
