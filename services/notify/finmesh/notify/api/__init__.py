"""Notify gRPC surface: protobuf in and out, and status codes."""

from __future__ import annotations

from typing import Any

import grpc

# Handlers take the context the generated servicer passes and never read it.
Context = grpc.aio.ServicerContext[Any, Any]
