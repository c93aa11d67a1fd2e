"""Notify rules without I/O: event plans, templates, consent, retry schedule, business days, complaints."""
