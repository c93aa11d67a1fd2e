"""Risk gRPC surface."""
