"""Payments rules without I/O: ledger transfers, payment lifecycle, validation."""
