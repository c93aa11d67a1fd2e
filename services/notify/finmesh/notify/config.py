"""Notify settings (FINMESH_* environment variables): channel endpoints, operators, retries, calendar."""

from __future__ import annotations

import base64
import os
from datetime import date
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from finmesh.notify.domain.business_days import BusinessCalendar
from finmesh.notify.domain.retry import RetryPolicy
from finmesh.platform.config import ServiceSettings

CommaList = Annotated[list[str], NoDecode]
DateList = Annotated[list[date], NoDecode]


class NotifySettings(ServiceSettings):
    # Base64 of 32 random bytes sealing addresses, webhook secrets and complaint texts.
    # Left empty, a key is generated once into data_dir for local runs.
    notify_master_key: SecretStr = SecretStr("")

    # E-mail over SMTP. An empty host leaves the channel unconfigured: such
    # messages go to the dead letters, to be redriven once it is configured.
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_sender: str = "finmesh <no-reply@finmesh.local>"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)

    # SMS through an HTTP provider (POST {sms_url}/messages, bearer key).
    sms_url: str = ""
    sms_api_key: SecretStr = SecretStr("")
    sms_timeout_seconds: float = Field(default=5.0, gt=0)

    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    # Plain http is accepted only for loopback receivers (local runs and tests).
    webhook_allow_loopback_http: bool = True

    # Who hears about risk alerts and overdue complaints (comma-separated).
    operator_emails: CommaList = Field(default_factory=list)
    operator_phones: CommaList = Field(default_factory=list)
    operator_locale: str = "zh-CN"

    # Retries of SMS and e-mail; webhooks retry for more than a day.
    delivery_max_attempts: int = Field(default=8, ge=1)
    delivery_base_backoff_seconds: float = Field(default=2.0, gt=0)
    delivery_max_backoff_seconds: float = Field(default=900.0, gt=0)
    webhook_max_attempts: int = Field(default=22, ge=1)
    webhook_max_backoff_seconds: float = Field(default=21600.0, gt=0)
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    worker_lease_seconds: float = Field(default=60.0, gt=0)
    # Parallel sends per lane; marketing gets its own, smaller lane so it never delays codes.
    security_concurrency: int = Field(default=8, ge=1)
    transactional_concurrency: int = Field(default=8, ge=1)
    marketing_concurrency: int = Field(default=2, ge=1)

    # Business calendar for complaint deadlines.
    business_time_zone: str = "Asia/Shanghai"
    business_holidays: DateList = Field(default_factory=list)
    business_extra_workdays: DateList = Field(default_factory=list)
    sla_check_seconds: float = Field(default=60.0, gt=0)

    @field_validator(
        "operator_emails", "operator_phones", "business_holidays", "business_extra_workdays", mode="before"
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def master_key(self) -> bytes:
        if self.notify_master_key.get_secret_value():
            return base64.b64decode(self.notify_master_key.get_secret_value())
        path = self.data_dir / "notify-master.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            with _exclusive(path) as f:
                f.write(base64.b64encode(os.urandom(32)))
        return base64.b64decode(path.read_bytes())

    def retry_policy(self, channel: str) -> RetryPolicy:
        if channel == "WEBHOOK":
            return RetryPolicy(
                self.webhook_max_attempts, self.delivery_base_backoff_seconds, self.webhook_max_backoff_seconds
            )
        return RetryPolicy(
            self.delivery_max_attempts, self.delivery_base_backoff_seconds, self.delivery_max_backoff_seconds
        )

    def calendar(self) -> BusinessCalendar:
        return BusinessCalendar(
            self.business_time_zone, frozenset(self.business_holidays), frozenset(self.business_extra_workdays)
        )


def _exclusive(path: Any) -> Any:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return open(os.devnull, "wb")
    return os.fdopen(fd, "wb")


def notify_settings(settings: ServiceSettings) -> NotifySettings:
    """NotifySettings from a plain ServiceSettings (tests and the runner may pass either)."""
    if isinstance(settings, NotifySettings):
        return settings
    return NotifySettings(**settings.model_dump())
