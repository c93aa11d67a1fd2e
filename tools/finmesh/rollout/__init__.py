"""Blue-green rollout of one finmesh service with the real helm and kubectl (`finmesh rollout`)."""
