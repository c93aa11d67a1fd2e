"""Identity's rules, free of I/O: identity numbers, registration, passwords, one-time codes and TOTP, the
login throttle, onboarding steps, token claims, and the vault's envelope encryption."""
