"""Payments' outside parties: the risk service (gRPC) and the banks behind each payment channel (HTTP)."""
