"""Notify gRPC surface."""
