"""Identity settings (FINMESH_* environment variables)."""

from __future__ import annotations

import base64
import os

from pydantic import SecretStr

from finmesh.platform.config import ServiceSettings


class IdentitySettings(ServiceSettings):
    # Base64 of 32 random bytes. Production takes it from a Secret (or KMS);
    # left empty, a key is generated once into data_dir for local runs.
    identity_master_key: SecretStr = SecretStr("")

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
