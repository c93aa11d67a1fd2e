"""Service configuration: read once from FINMESH_* environment variables into a frozen object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service shares. OTEL_* variables are left to the OTel SDK."""

    model_config = SettingsConfigDict(env_prefix="FINMESH_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    # 0 asks the OS for a free port; the server reports the one it got.
    port: int = Field(default=0, ge=0, le=65535)
    # SQLAlchemy async URL; empty means a SQLite file in data_dir.
    database_url: str = ""
    data_dir: Path = Path(".finmesh")
    log_level: str = "info"
    service_version: str = "0.1.0"
    deployment_color: str = "local"
    # Where spans go when OTEL_EXPORTER_OTLP_ENDPOINT is unset; empty keeps them in memory only.
    span_file: str = ""
    tracing_enabled: bool = True
    # Metrics (finmesh.platform.observability.metrics): recorded unless disabled, and served as Prometheus
    # exposition on http://host:metrics_port/metrics; 0 picks a free port (the runner prints it), -1 serves
    # none (OTLP export, when configured, still runs). The chart sets 9464, the OTel Prometheus default.
    metrics_enabled: bool = True
    metrics_port: int = Field(default=0, ge=-1, le=65535)
    # How often gauges read from a database (queue depths, outbox backlog, overdue complaints) are sampled.
    metrics_sample_seconds: float = Field(default=15.0, gt=0)
    # At start, upgrade the database to this code's newest migration (finmesh.platform.storage.migrations), so
    # `make run` works on a fresh machine. Production sets it false: the Helm Job runs `migrate` first,
    # and a server then only checks that no migration it needs is missing.
    auto_migrate: bool = True
    # On SIGTERM: report NOT_SERVING this long before refusing new calls, so
    # load balancers stop routing here, then give in-flight calls this grace.
    drain_delay_seconds: float = Field(default=0.0, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # Bound HTTP/2 connection age so clients re-resolve after a blue-green flip.
    max_connection_age_seconds: int = Field(default=300, ge=1)
    # Default deadline for outgoing calls that have no incoming deadline to inherit.
    call_timeout_seconds: float = Field(default=2.0, gt=0)
    # Targets (host:port) of the other services.
    identity_target: str = ""
    payments_target: str = ""
    risk_target: str = ""
    notify_target: str = ""
    # Who gets this service's outbox events (finmesh.platform.messaging.consumers): comma-separated consumer
    # names, each through its own relay and delivery state; a consumer's target is its <name>_target above,
    # or an entry of events_consumer_targets ("audit=audit:50060,..."). events_filters narrows the event
    # types a consumer takes ("risk=identity.user.verified.v1|identity.user.*;audit=*"); notify takes all.
    events_consumers: str = "notify"
    events_filters: str = ""
    events_consumer_targets: str = ""
    # "enforce" (the default): every RPC checks the caller's token against the permission its proto
    # declares (finmesh.platform.auth.access). "off" lets every call through: only for a test or drill that
    # says why it needs it.
    auth_mode: Literal["enforce", "off"] = "enforce"
    # How often cached token-verification keys are refreshed from identity.
    auth_keys_refresh_seconds: float = Field(default=60.0, gt=0)
    # Service-to-service tokens (finmesh.platform.auth.service_tokens): this service's name and credential
    # ("<service>.<mac>"); or the mesh's service secret, from which identity checks credentials and
    # local runs derive them. Empty secret: one is generated into data_dir.
    service_name: str = ""
    service_credential: SecretStr = SecretStr("")
    service_secret: SecretStr = SecretStr("")

    # Overload (finmesh.platform.rpc.ratelimit): each caller's token bucket, refilled at _RPS up to _BURST;
    # past it a call is refused RESOURCE_EXHAUSTED RATE_LIMITED at once. Service tokens get their own,
    # larger buckets (one carries many users' traffic). PER_CALLER_RPS=0 turns limits off. Defaults are
    # generous (above what one process serves, so local load runs and benchmarks measure the services, not
    # the limiter); the Helm chart sets production's.
    rate_limit_per_caller_rps: float = Field(default=1000.0, ge=0)
    rate_limit_per_caller_burst: int = Field(default=2000, ge=1)
    rate_limit_per_service_rps: float = Field(default=5000.0, gt=0)
    rate_limit_per_service_burst: int = Field(default=10000, ge=1)
    # Most callers remembered (least recently seen forgotten first): bounds the limiter's memory.
    rate_limit_max_callers: int = Field(default=10_000, ge=1)
    # Where the buckets live (finmesh.platform.rpc.shared_buckets): "local", in this process (a limit of N is
    # N per pod), or "redis", in the Redis at redis_url, shared by every replica of both colors. With Redis
    # slower than redis_timeout_seconds or down, each pod uses its local buckets until a probe (backing off
    # from 0.1 s to redis_probe_max_seconds) finds Redis again.
    rate_limit_backend: Literal["local", "redis"] = "local"
    # redis:// or rediss:// (TLS); it may hold credentials, so it is a secret (never logged). A non-empty
    # redis_password replaces the URL's password (the chart takes it from a Secret).
    redis_url: SecretStr = SecretStr("")
    redis_password: SecretStr = SecretStr("")
    # Every bucket key starts with it: several meshes (or tests) can share one Redis.
    redis_key_prefix: str = "finmesh:ratelimit:"
    # One bucket check may take this long before the pod falls back to its local buckets.
    redis_timeout_seconds: float = Field(default=0.025, gt=0, le=5)
    redis_probe_max_seconds: float = Field(default=5.0, gt=0)
    # Connections per process to Redis; a check waiting longer than the timeout for one falls back too.
    redis_max_connections: int = Field(default=32, ge=1, le=1000)
    # In-flight calls per server (gRPC answers RESOURCE_EXHAUSTED beyond it, never queues); 0 = no cap.
    max_concurrent_rpcs: int = Field(default=1000, ge=0)
    # PostgreSQL connections per process: the main engine keeps db_pool_size and may open as many again
    # under a burst; a service with a separate read engine (payments) keeps db_read_pool_size more. Every
    # pod of both colors counts against the server's max_connections (100 by default).
    db_pool_size: int = Field(default=10, ge=1, le=500)
    db_read_pool_size: int = Field(default=20, ge=1, le=500)

    # Mutual TLS: all three files, or none for plaintext (finmesh.platform.rpc.tls).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""
    # With TLS on, also serve grpc.health.v1 alone in plaintext here, for the kubelet's gRPC
    # probe (it cannot present a client certificate); 0 = off.
    health_port: int = Field(default=0, ge=0, le=65535)

    # Events between services (finmesh.platform.messaging): "grpc" (the default, no broker) has each producer's
    # outbox relay call notify's DeliverEvents; "rabbitmq" has it publish to a topic exchange per producer
    # (finmesh.platform.messaging.rabbitmq), where each consumer has its own queue. Both ends read these.
    events_transport: Literal["grpc", "rabbitmq"] = "grpc"
    # amqp://user:password@host:5672/vhost (amqps:// for TLS). Carries the credentials: from a Secret, never
    # logged (finmesh.platform.messaging.rabbitmq.topology.redacted shows it without them).
    rabbitmq_url: SecretStr = SecretStr("")
    # When set, the virtual host to use instead of the URL's (`finmesh up --events rabbitmq` and the tests give
    # each mesh its own).
    rabbitmq_vhost: str = ""
    # Exchanges are <prefix>.<producer>.events, queues <prefix>.<consumer>.<partition>.
    events_exchange_prefix: str = Field(default="finmesh", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    # Queues per consumer (single active consumer each); an aggregate's events always go to the same one, so
    # replicas share the work and order per aggregate holds. Producers and consumers must agree on it.
    events_partitions: int = Field(default=1, ge=1, le=64)
    # A consumer's deliveries of one message before it goes to the dead letters (quorum x-delivery-limit).
    events_max_deliveries: int = Field(default=5, ge=1, le=1000)
    # Unacknowledged messages a consumer holds at once (its largest batch).
    events_prefetch: int = Field(default=200, ge=1, le=5000)

    @model_validator(mode="after")
    def _broker_named(self) -> ServiceSettings:
        # Fail at start, not at the first event: a rabbitmq transport without a broker would fill the outbox.
        if self.events_transport == "rabbitmq" and not self.rabbitmq_url.get_secret_value():
            raise ValueError("FINMESH_EVENTS_TRANSPORT=rabbitmq needs FINMESH_RABBITMQ_URL (amqp://user:pass@host/)")
        return self

    @model_validator(mode="after")
    def _redis_backend_needs_an_address(self) -> ServiceSettings:
        if self.rate_limit_backend == "redis" and not self.redis_url.get_secret_value():
            raise ValueError("FINMESH_RATE_LIMIT_BACKEND=redis needs FINMESH_REDIS_URL (redis:// or rediss://)")
        return self

    def database_url_for(self, service: str) -> str:
        """The configured URL, or the embedded SQLite default for this service."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.data_dir / (service + '.db')}"
