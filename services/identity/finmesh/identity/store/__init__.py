"""Identity persistence: users with encrypted personal data."""
