"""Service configuration: read once from FINMESH_* environment variables into a frozen object."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
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

    def database_url_for(self, service: str) -> str:
        """The configured URL, or the embedded SQLite default for this service."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{self.data_dir / (service + '.db')}"
