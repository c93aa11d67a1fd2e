"""Events over RabbitMQ (FINMESH_EVENTS_TRANSPORT=rabbitmq): the relay publishes, consumers take their own copy.

Producers keep their transactional outbox; the relay's sink (`publisher.RabbitEventSink`, chosen by
finmesh.platform.messaging.event_sink.event_sink_for) publishes each event to the producer's topic exchange
`<prefix>.<producer>.events` with a publisher confirm, routing key `<partition>.<event_type>`, and the row is
marked delivered only after the confirm. Names and shapes are in `topology`, spans in `tracing`.

Consuming is configuration: a service names its queue, what it binds, and a handler.

    from finmesh.platform.messaging.rabbitmq.consumer import consume

    async def handle(events: Sequence[event_pb2.Event]) -> list[BatchOutcome]:
        # apply the events in order, in one transaction, deduplicating by event_id; one outcome per event:
        # BatchOutcome(taken=True) (new or duplicate), BatchOutcome(taken=False, error="why") (poison: dead
        # letters), BatchOutcome(taken=False, deferred=True) (held behind an earlier event: delivered again)
        ...

    consumer = consume(settings, "risk", [("identity", "identity.user.#")], handle)   # started
    ...
    await consumer.stop()

- `settings` is the service's ServiceSettings (or a `topology.Broker`); `"risk"` names its queues
  `<prefix>.risk.<partition>` (durable quorum queues, single active consumer each, so replicas stand by and
  order per aggregate holds), and its dead letters `<prefix>.risk.dlx` / `<prefix>.risk.dead`.
- Each binding is (producer, event-type pattern), a topic pattern over the event type (`*` one word, `#` any).
- `handle` gets the events in arrival order, each aggregate's in sequence order, and must be idempotent on
  event_id (messages are delivered at least once). Acknowledgements follow its outcomes, after it returned
  (so after its commit). A transient exception (database down) is retried in place; any other splits the
  batch, and an event failing `FINMESH_EVENTS_MAX_DELIVERIES` times goes to the dead letters.
- Operators list and redrive dead letters with `finmesh outbox --consumer NAME list|redrive --broker`
  (`dead_letters`).

See consumer.py for the failure handling and docs/RELIABILITY.md ("Events over RabbitMQ") for what is proven.
"""
