"""Payments gRPC surface: protobuf in and out, domain calls in between."""
