"""Events leaving a service: the transactional outbox, its relay and administration, and the sink events go to."""
