"""Domain errors: plain Python, no gRPC. `meshkit.status` maps them to google.rpc.Status.

Every error carries one ErrorInfo reason (UPPER_SNAKE) and optional lowerCamel metadata.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator


def causes(exc: BaseException | None, limit: int = 5) -> Iterator[BaseException]:
    """`exc`, then what caused it (its __cause__, else its __context__), and so on: at most
    `limit` exceptions, so that a cycle in the chain ends."""
    while exc is not None and limit > 0:
        yield exc
        exc, limit = exc.__cause__ or exc.__context__, limit - 1


class Lasting(Exception):
    """A failure that outlasted the retries of what met it, however passing its cause (NATS not
    answering for 30 s: a relay cut off from it, or pointed at the wrong one): an operator must
    look, so it is logged at ERROR (meshkit.transient never calls it passing)."""


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    code = "INTERNAL"  # a grpc.StatusCode name
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None,
                 message: str | None = None, metadata: dict[str, str] | None = None) -> None:
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid request", reason=reason, metadata=metadata)


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_seconds: float | None, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        """`retry_after_seconds`: when the same call may succeed (RetryInfo); None where waiting
        alone does not help (a limit the caller must act on)."""
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


# The largest request message a public call takes: the services' gRPC ports
# (grpc.max_receive_message_length), order_svc's bridge, and Envoy's buffers in front of them
# (envoy/envoy.yaml.tmpl, per_request_buffer_limit_bytes and the buffer filter, which hold the
# message with its gRPC frame's 5-byte header: GRPC_FRAME_HEADER_BYTES more).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
GRPC_FRAME_HEADER_BYTES = 5


def request_too_large() -> InvalidArgument:
    """A request over MAX_REQUEST_BYTES, answered alike wherever it is refused (Envoy, the
    bridge): INVALID_ARGUMENT, not RESOURCE_EXHAUSTED, which in this API says that the caller
    is over a limit of its own (a rate limit, its open streams); the same request never fits."""
    return InvalidArgument([], reason="REQUEST_TOO_LARGE",
                           message=f"the request is larger than {MAX_REQUEST_BYTES >> 20} MiB, the most a call "
                                   "takes (a public request is under 1 KiB)",
                           metadata={"limitBytes": str(MAX_REQUEST_BYTES)})


class Unavailable(DomainError):
    """Transient: the same request, sent again (after `retry_after_seconds` when given, which
    the client reads as google.rpc.RetryInfo), may succeed."""
    code = "UNAVAILABLE"
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None,
                 retry_after_seconds: float | None = None) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_seconds = retry_after_seconds


class Unimplemented(DomainError):
    code = "UNIMPLEMENTED"
    default_reason = "NOT_IMPLEMENTED"


@dataclass
class Violations:
    """Collects field violations while a request is parsed, then raises them together."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
