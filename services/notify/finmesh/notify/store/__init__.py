"""Notify persistence: received events (dedupe) and notifications."""
