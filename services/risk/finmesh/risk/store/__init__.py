"""Risk persistence: assessments (velocity state shared by every replica)."""
