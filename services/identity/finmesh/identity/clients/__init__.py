"""Identity's clients: the services it calls (notify, risk) and outside parties (the real-name registry)."""
