"""Identity gRPC surface."""
