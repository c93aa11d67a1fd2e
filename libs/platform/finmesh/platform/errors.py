"""Domain errors: what went wrong, in words a caller can act on. Free of gRPC; api.status maps them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every refusal a service gives on purpose. `reason` is an ErrorReason name."""

    kind = "failed_precondition"

    def __init__(self, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in metadata.items()}


class InvalidArgument(DomainError):
    """The request itself is wrong; `violations` name each bad field."""

    kind = "invalid_argument"

    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str = "") -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__("VALIDATION_FAILED", text)


class NotFound(DomainError):
    kind = "not_found"


class AlreadyExists(DomainError):
    kind = "already_exists"


class FailedPrecondition(DomainError):
    kind = "failed_precondition"


class PermissionDenied(DomainError):
    kind = "permission_denied"


class Unauthenticated(DomainError):
    kind = "unauthenticated"


class Unavailable(DomainError):
    """A dependency is down or timed out; the caller may retry with the same idempotency key."""

    kind = "unavailable"


class ResourceExhausted(DomainError):
    kind = "resource_exhausted"


class Validator:
    """Collects field violations so a caller hears about every bad field at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def require(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.violations.append(FieldViolation(field, description))
        return ok

    def raise_if_any(self) -> None:
        if self.violations:
            raise InvalidArgument(self.violations)
