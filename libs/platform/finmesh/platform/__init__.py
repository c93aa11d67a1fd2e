"""Shared runtime every finmesh service stands on: server, telemetry, logs, errors, storage, outbox."""
