"""statewave-runner: keeps a Statewave memory server fed from the systems a team already uses.

One process, one TOML file: every ``[[pull.<kind>]]`` source runs on its
schedule, every ``[[push.<kind>]]`` webhook receiver is mounted under one HTTP
server, and every episode is delivered to Statewave exactly once in effect.
The core imports the standard library only.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, load_config, parse_config
from .connectors.base import Checkpoint, Episode, SourcePointer, SyncRequest, idempotency_key
from .errors import (
    AuthError,
    ConfigError,
    ConfigNotFoundError,
    ConnectorError,
    DeliveryError,
    DriverMissingError,
    EmitError,
    Issue,
    PermanentError,
    RetryableError,
    RunnerError,
    ScheduleError,
    StateError,
    StatewaveRunnerError,
)
from .ingest import Sink
from .runner import Runner, TickResult
from .state import StateBackend, open_state

__all__ = [
    "AuthError",
    "Checkpoint",
    "Config",
    "ConfigError",
    "ConfigNotFoundError",
    "ConnectorError",
    "DeliveryError",
    "DriverMissingError",
    "EmitError",
    "Episode",
    "Issue",
    "PermanentError",
    "RetryableError",
    "Runner",
    "RunnerError",
    "ScheduleError",
    "Sink",
    "SourcePointer",
    "StateBackend",
    "StateError",
    "StatewaveRunnerError",
    "SyncRequest",
    "TickResult",
    "__version__",
    "idempotency_key",
    "load_config",
    "open_state",
    "parse_config",
]
