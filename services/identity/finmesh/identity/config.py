"""Identity settings (FINMESH_* environment variables)."""

from __future__ import annotations

import base64
import os

from pydantic import Field, SecretStr

from finmesh.platform.config import ServiceSettings


class IdentitySettings(ServiceSettings):
    # Base64 of 32 random bytes. Production takes it from a Secret (or KMS);
    # left empty, a key is generated once into data_dir for local runs.
    identity_master_key: SecretStr = SecretStr("")
    # Real-name registry adapter (finmesh.identity.registry); empty: real-name checks are unavailable.
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
    # Password guessing: this many failures in a row lock the login for identity_login_lock_seconds.
    identity_login_max_failures: int = Field(default=5, ge=1)
    identity_login_lock_seconds: int = Field(default=900, ge=1)

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
