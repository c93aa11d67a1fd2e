"""Progressive delivery of one finmesh service (`finmesh rollout <verb>`): record, controller, backends."""
