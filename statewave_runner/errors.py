"""The exception hierarchy.

Every error an operator can cause or meet has its own class and a message that
names where the problem is and what to do. Module-specific errors subclass
:class:`StatewaveRunnerError` so callers can catch the whole family.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class StatewaveRunnerError(Exception):
    """Base class of every error raised on purpose by statewave-runner."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a config file: a dotted path and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(StatewaveRunnerError):
    """The config could not be used. ``issues`` lists every problem found in one pass."""

    def __init__(self, message: str, issues: Iterable[Issue] = (), *, source: str | None = None):
        self.issues: tuple[Issue, ...] = tuple(issues)
        self.source = source
        super().__init__(message)

    def __str__(self) -> str:
        head = super().__str__()
        if not self.issues:
            return head
        return head + "\n" + "\n".join(f"  {issue}" for issue in self.issues)


class ConfigNotFoundError(ConfigError):
    """No config file was found in any of the searched locations."""


class ScheduleError(StatewaveRunnerError, ValueError):
    """A schedule expression does not parse or can never fire.

    ``position`` is the 0-based character offset of the offending token in the
    expression when known, ``reason`` the bare explanation.
    """

    def __init__(self, expression: str, reason: str, position: int | None = None):
        self.expression = expression
        self.reason = reason
        self.position = position
        where = f" at position {position}" if position is not None else ""
        super().__init__(f"{expression!r}{where}: {reason}")


# --------------------------------------------------------------------------- state


class StateError(StatewaveRunnerError):
    """A state backend failed (unreachable, corrupt, locked, misconfigured)."""


class DriverMissingError(StateError):
    """The optional driver a state backend needs is not installed."""

    def __init__(self, kind: str, module: str, extra: str):
        self.kind = kind
        self.module = module
        self.extra = extra
        super().__init__(
            f"state kind \"{kind}\" needs {module}: pip install 'statewave-runner[{extra}]'"
        )


class StateLockedError(StateError):
    """Another process holds the state file's exclusive lock."""


class StateVersionError(StateError):
    """A state file has a format version this release does not know."""


# --------------------------------------------------------------------------- delivery


class DeliveryError(StatewaveRunnerError):
    """Delivering episodes to the sink failed.

    ``retryable`` says whether the same batch may succeed later; ``retry_after``
    (seconds) is the sink's own hint, e.g. from ``Retry-After``. ``delivered``
    is how many episodes at the start of the batch the sink did accept before
    it failed (a sink that sends one by one); the worker acknowledges those and
    applies the error to the rest only.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        delivered: int = 0,
    ):
        self.retry_after = retry_after
        self.status = status
        self.delivered = delivered
        super().__init__(message)


class RetryableError(DeliveryError):
    """Transient: connection error, timeout, 408/429/5xx. Try again later."""

    retryable = True


class PermanentError(DeliveryError):
    """The sink rejected the batch for good (400/404/422).

    ``index`` is the position within the batch of the episode that caused it,
    when the sink said so (Statewave's 422 on ``/v1/episodes/batch``); the other
    episodes of the batch may then be retried without it. Without ``index`` the
    worker retries the batch's episodes one by one to find the bad one(s).
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        status: int | None = None,
        delivered: int = 0,
    ):
        self.index = index
        super().__init__(message, status=status, delivered=delivered)


class AuthError(DeliveryError):
    """The sink refused our credentials (401/403): pause delivery, do not dead-letter."""

    retryable = True


# --------------------------------------------------------------------------- connectors


class ConnectorError(StatewaveRunnerError):
    """A connector could not do its work (bad upstream answer, auth, not found).

    ``reason`` is a short machine-readable word (``auth_failed``,
    ``rate_limited``, ``not_found``, ``network``, ``bad_response`` ...).
    """

    def __init__(self, message: str, *, reason: str = "error"):
        self.reason = reason
        super().__init__(message)


class EmitError(StatewaveRunnerError):
    """Queueing episodes durably failed; a push receiver must answer 503."""


class RunnerError(StatewaveRunnerError):
    """The runner could not start or stop (port in use, state unreachable ...)."""
