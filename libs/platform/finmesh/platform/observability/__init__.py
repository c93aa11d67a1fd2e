"""What operators see: traces (lean RPC spans, W3C propagation), structured logs, the synthetic-traffic mark."""
