"""The services risk's emergency response acts through: payments freezes accounts, identity raises tiers."""
