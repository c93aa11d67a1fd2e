"""Identity settings (FINMESH_* environment variables)."""

from __future__ import annotations

import base64
import ipaddress
import os

from pydantic import AliasChoices, Field, SecretStr, field_validator

from finmesh.platform.config import ServiceSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentitySettings(ServiceSettings):
    # Identity's user events go to notify (messages) and to risk: the country of residence its geography rule
    # needs, the tier it keeps in step, and erasure (finmesh.risk.usecases.intake).
    events_consumers: str = "notify,risk"
    events_filters: str = "risk=identity.user.verified.v1|identity.user.tier_changed.v1|identity.user.erased.v1"
    # Base64 of 32 random bytes. Production takes it from a Secret (or KMS);
    # left empty, a key is generated once into data_dir for local runs.
    identity_master_key: SecretStr = SecretStr("")
    # Real-name registry adapter (finmesh.identity.clients.registry); empty: real-name checks are unavailable.
    identity_registry_url: str = ""
    identity_registry_api_key: SecretStr = SecretStr("")
    # Access tokens are short-lived: revocation and role or tier changes take effect within this.
    identity_access_token_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    identity_service_token_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    identity_refresh_token_ttl_seconds: int = Field(default=14 * 86400, ge=300)
    # One-time codes (seed 3.1): lifetime, wrong guesses allowed, codes per user per hour.
    identity_code_ttl_seconds: int = Field(default=300, ge=30, le=1800)
    identity_code_max_attempts: int = Field(default=5, ge=1, le=10)
    identity_codes_per_hour: int = Field(default=5, ge=1)
    # Password guessing (finmesh.identity.domain.login_throttle): never a lockout. Per (account, client
    # address): this many failures are free, then each waits twice as long as the one before, from the base
    # delay up to the max delay. Per account: this many failures from all addresses within the window, and
    # addresses the owner has not logged in from get the password's verdict only with the second factor.
    identity_login_max_failures: int = Field(default=5, ge=1)
    identity_login_base_delay_seconds: float = Field(default=1.0, gt=0)
    # FINMESH_IDENTITY_LOGIN_LOCK_SECONDS (the old fixed lock) is still read, as the cap of the delays.
    identity_login_max_delay_seconds: float = Field(
        default=900.0,
        gt=0,
        validation_alias=AliasChoices(
            "identity_login_max_delay_seconds",
            "FINMESH_IDENTITY_LOGIN_MAX_DELAY_SECONDS",
            "FINMESH_IDENTITY_LOGIN_LOCK_SECONDS",
        ),
    )
    identity_login_account_failures: int = Field(default=20, ge=1)
    identity_login_window_seconds: int = Field(default=86_400, ge=60)
    # An address the owner completed a login from (second factor included) within this many days is theirs.
    identity_login_known_address_days: int = Field(default=90, ge=1)
    # Comma-separated addresses or networks (CIDR) of proxies whose X-Forwarded-For is believed. Empty: the
    # client address is the gRPC peer's, and a forwarded header is ignored.
    identity_login_trusted_proxies: str = ""
    # FINMESH_JWKS_PORT: GET /.well-known/jwks.json (finmesh.identity.api.jwks) on host:jwks_port, for edge
    # proxies and JWT libraries; 0 picks a free port (the runner prints it), -1 serves none. The chart sets 8080.
    jwks_port: int = Field(default=0, ge=-1, le=65535)

    @field_validator("identity_login_trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # a ValueError names the bad entry
        return value

    def trusted_proxies(self) -> list[Network]:
        return [
            ipaddress.ip_network(p.strip(), strict=False)
            for p in self.identity_login_trusted_proxies.split(",")
            if p.strip()
        ]

    def master_key(self) -> bytes:
        if self.identity_master_key.get_secret_value():
            return base64.b64decode(self.identity_master_key.get_secret_value())
        path = self.data_dir / "identity-master.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64encode(os.urandom(32)))
        return base64.b64decode(path.read_bytes())
