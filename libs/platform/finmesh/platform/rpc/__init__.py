"""gRPC plumbing: server, outgoing channels, the servicer guard, request decoding, field rules, rate limits, TLS."""
