"""Fakes of outside systems for tests and local runs: real servers speaking the real protocol."""
