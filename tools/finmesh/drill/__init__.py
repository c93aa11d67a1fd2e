"""The local blue-green drill: a TCP forwarder standing in for the Kubernetes Service, a bounded payment load,
colored service processes, and an OTLP receiver that records which color served each call."""
