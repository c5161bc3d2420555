"""Loading ``statewave-connectors.toml``: search, interpolation, validation.

Compatible with the Node runner's config (``@statewavedev/connectors-config``):
same tables and keys, same search order, same ``${VAR}`` interpolation. Unlike
Node, unknown keys are reported (with a did-you-mean) instead of silently
ignored, 6-field cron validates, and every problem in a file is reported in one
pass with its dotted path. The result is a tree of frozen dataclasses.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from . import schema
from .connectors.base import ConnectorSpec, PullConfig, SourceConfig, option, secret
from .connectors.registry import NODE_KINDS, Mode, Registry
from .errors import ConfigError, ConfigNotFoundError, Issue, ScheduleError
from .redact import redact_url

ConfigSource = Literal["explicit", "env", "cwd", "xdg", "string"]

ENV_CONFIG_VAR = "STATEWAVE_CONNECTORS_CONFIG"
CWD_FILE = "statewave-connectors.toml"
XDG_RELATIVE = Path("statewave-connectors") / "config.toml"

TOP_LEVEL = ("statewave", "runner", "pull", "push")
STATE_KINDS = ("memory", "file", "sqlite", "postgres", "redis")
FILE_SINK_HINT = 'to try the runner without a server, use url = "file:./var/episodes.jsonl"'


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class StatewaveConfig:
    """``[statewave]``: where episodes go and how delivery behaves."""

    url: str = option(
        doc='Statewave base URL (http/https), or "file:PATH" for a local JSON Lines sink',
        example="https://statewave.example.com",
    )
    api_key: str | None = secret(None, doc="sent as X-API-Key")
    tenant_id: str | None = option(None, doc="sent as X-Tenant-ID")
    timeout: float = option(10.0, min=0.1, doc="seconds per HTTP request to Statewave")
    batch_size: int = option(100, min=1, max=100, doc="episodes per /v1/episodes/batch request")
    concurrency: int = option(2, min=1, max=16, doc="delivery requests in flight at once")
    max_attempts: int = option(
        20, min=1, doc="delivery attempts before an episode is dead-lettered"
    )
    backoff_initial: float = option(1.0, min=0.001, doc="seconds before the first retry")
    backoff_max: float = option(60.0, min=0.001, doc="cap on the retry delay, seconds")
    dedup_ttl: float = option(
        7 * 24 * 3600.0, min=0.0, doc="seconds an idempotency key blocks a re-queue"
    )

    @property
    def is_file_sink(self) -> bool:
        """True for ``url = "file:PATH"`` (the local JSON Lines sink)."""
        return self.url.startswith("file:")

    @property
    def file_path(self) -> str:
        """PATH of a ``file:PATH`` sink (``file://`` and ``file:`` forms)."""
        rest = self.url[len("file:") :]
        return rest[2:] if rest.startswith("//") else rest

    def check(self) -> Iterable[tuple[str, str]]:
        from .ingest import validate_sink_url

        try:
            validate_sink_url(self.url)
        except ValueError as exc:
            yield "url", f'{exc} (got "{redact_url(self.url)}")'
        if self.backoff_max < self.backoff_initial:
            yield "backoff_max", "must be >= backoff_initial"


@dataclass(frozen=True, kw_only=True)
class StateConfig:
    """``[runner.state]``: where cursors, dedup, the outbox and leases live."""

    kind: Literal["memory", "file", "sqlite", "postgres", "redis"] = option(
        "memory", doc="memory | file | sqlite | postgres | redis"
    )
    path: str | None = option(
        None, doc="file: cursors JSON (default <state_dir>/cursors.json); sqlite: database file"
    )
    url: str | None = option(None, doc="postgres/redis connection URL (password redacted)")
    table: str = option(
        "statewave_runner_cursors",
        pattern=r"[A-Za-z_][A-Za-z0-9_]*",
        doc="postgres cursor table (outbox tables share its prefix)",
    )
    schema: str | None = option(None, pattern=r"[A-Za-z_][A-Za-z0-9_]*", doc="postgres schema")
    key_prefix: str = option("statewave_runner:", doc="redis key prefix")

    def check(self) -> Iterable[tuple[str, str]]:
        used = {
            "memory": set(),
            "file": {"path"},
            "sqlite": {"path"},
            "postgres": {"url", "table", "schema"},
            "redis": {"url", "key_prefix"},
        }[self.kind]
        defaults = {"table": "statewave_runner_cursors", "key_prefix": "statewave_runner:"}
        for key in ("path", "url", "table", "schema", "key_prefix"):
            value = getattr(self, key)
            if key not in used and value is not None and value != defaults.get(key):
                yield key, f'is not used by kind "{self.kind}"'
        if self.kind in ("postgres", "redis") and not self.url:
            yield "url", f"required for kind={self.kind}"
        schemes = {"postgres": ("postgres", "postgresql"), "redis": ("redis", "rediss", "unix")}
        scheme = urlsplit(self.url).scheme if self.url else ""
        if self.url and self.kind in schemes and scheme not in schemes[self.kind]:
            example = "postgresql" if self.kind == "postgres" else "redis"
            yield "url", f'expected {example}://..., got "{redact_url(self.url)}"'


@dataclass(frozen=True, kw_only=True)
class MetricsAuthConfig:
    """``[runner.metrics.auth]``."""

    kind: Literal["none", "bearer", "basic"] = option("none", doc="none | bearer | basic")
    token: str | None = secret(None, doc="bearer token")
    username: str | None = option(None, doc="basic auth user")
    password: str | None = secret(None, doc="basic auth password")

    def check(self) -> Iterable[tuple[str, str]]:
        if self.kind == "bearer" and not self.token:
            yield "token", "required for kind=bearer"
        if self.kind == "basic":
            if not self.username:
                yield "username", "required for kind=basic"
            if not self.password:
                yield "password", "required for kind=basic"


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """``[runner.metrics]``."""

    enabled: bool = option(True, doc="false unmounts the metrics path")
    path: str = option("/metrics", pattern=r"/\S*", doc='must start with "/"')
    auth: MetricsAuthConfig = option(default_factory=MetricsAuthConfig)
    default_metrics: bool = option(True, doc="process_* and python_* series")


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """``[runner]``: the process itself."""

    host: str = option("0.0.0.0", doc="bind address")
    port: int = option(3000, min=0, max=65535, doc="HTTP port (0 picks a free one)")
    state_dir: str = option("./var/connectors-state", doc="default directory for state files")
    log_format: Literal["json", "text"] = option("json", doc="json | text")
    log_level: Literal["debug", "info", "warn", "warning", "error", "critical"] = option(
        "info", doc="debug | info | warn | error | critical"
    )
    timezone: str | None = option(None, doc="default IANA zone for cron schedules (UTC)")
    state: StateConfig = option(default_factory=StateConfig)
    metrics: MetricsConfig = option(default_factory=MetricsConfig)
    max_concurrent_ticks: int = option(8, min=1, max=256, doc="pull ticks running at once")
    stop_timeout: float = option(30.0, min=0.0, doc="seconds stop() waits for ticks and requests")
    max_body_bytes: int = option(1024 * 1024, min=1, doc="larger request bodies get 413")
    max_header_bytes: int = option(64 * 1024, min=1024, doc="larger request heads get 431")
    header_timeout: float = option(10.0, min=0.1, doc="seconds to receive request headers")
    body_timeout: float = option(30.0, min=0.1, doc="seconds to receive a request body")
    keepalive_timeout: float = option(75.0, min=0.1, doc="idle keep-alive connections close")
    max_connections: int = option(1024, min=1, doc="beyond this, 503 + Retry-After")
    replica_id: str | None = option(None, doc="lease owner id; default <hostname>:<pid>")

    def check(self) -> Iterable[tuple[str, str]]:
        if self.timezone is not None:
            problem = timezone_problem(self.timezone)
            if problem:
                yield "timezone", problem


def timezone_problem(name: str) -> str | None:
    """Why ``name`` is not a usable IANA zone, or ``None``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # only when a zone is configured

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f'"{name}" is not a known IANA time zone (e.g. "Europe/London", "UTC")'
    return None


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class SourceEntry:
    """One ``[[pull.<kind>]]`` or ``[[push.<kind>]]`` entry, validated."""

    mode: Mode
    kind: str
    index: int
    config: SourceConfig
    spec: ConnectorSpec

    @property
    def name(self) -> str:
        """The entry's ``name``."""
        return self.config.name

    @property
    def key(self) -> str:
        """``kind/name``: how state, logs and metrics know this source."""
        return f"{self.kind}/{self.name}"

    @property
    def where(self) -> str:
        """Its dotted config path, ``pull.github[0]``."""
        return f"{self.mode}.{self.kind}[{self.index}]"

    @property
    def mount_path(self) -> str:
        """``/<kind>/<name>/events`` (push receivers)."""
        return f"/{self.kind}/{self.name}/events"

    @property
    def schedule(self) -> str:
        """The schedule expression (pull sources); ``""`` for push."""
        return self.config.schedule if isinstance(self.config, PullConfig) else ""


@dataclass(frozen=True)
class Config:
    """A validated config. Build one with :func:`load_config` or :func:`parse_config`."""

    statewave: StatewaveConfig
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    pull: tuple[SourceEntry, ...] = ()
    push: tuple[SourceEntry, ...] = ()
    path: str | None = None
    source: ConfigSource = "string"
    secrets: frozenset[str] = frozenset()

    def timezone_for(self, entry: SourceEntry) -> str | None:
        """The zone a pull source's cron runs in: its own, else ``[runner] timezone``."""
        own = entry.config.timezone if isinstance(entry.config, PullConfig) else None
        return own or self.runner.timezone

    def redacted(self) -> dict[str, Any]:
        """Plain data with every secret masked: safe to print."""
        return {
            "path": self.path,
            "source": self.source,
            "statewave": schema.redacted(self.statewave),
            "runner": schema.redacted(self.runner),
            "pull": {e.key: {"where": e.where, **schema.redacted(e.config)} for e in self.pull},
            "push": {
                e.key: {"where": e.where, "mount": e.mount_path, **schema.redacted(e.config)}
                for e in self.push
            },
        }


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Resolved:
    """Where the config was found, and everywhere that was searched."""

    path: Path | None
    source: ConfigSource | None
    searched: tuple[tuple[ConfigSource, Path], ...]


def resolve_path(
    explicit: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> Resolved:
    """The Node runner's search order; the first existing file wins.

    1. ``explicit`` (``--config``); 2. ``$STATEWAVE_CONNECTORS_CONFIG``;
    3. ``./statewave-connectors.toml``; 4. ``$XDG_CONFIG_HOME/statewave-connectors/config.toml``
    (``~/.config`` when unset).
    An explicit path that does not exist is not skipped over: it is the answer
    (the caller reports it missing), so a typo never loads some other file.
    """
    env = os.environ if env is None else env
    base = Path(cwd) if cwd is not None else Path.cwd()
    home_dir = Path(home) if home is not None else Path.home()
    candidates: list[tuple[ConfigSource, Path]] = []
    if explicit:
        path = Path(explicit)
        return Resolved(path, "explicit", (("explicit", path),))
    if env.get(ENV_CONFIG_VAR):
        path = Path(env[ENV_CONFIG_VAR])
        return Resolved(path, "env", (("env", path),))
    candidates.append(("cwd", base / CWD_FILE))
    xdg_root = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home_dir / ".config"
    candidates.append(("xdg", xdg_root / XDG_RELATIVE))
    for source, path in candidates:
        if path.is_file():
            return Resolved(path, source, tuple(candidates))
    return Resolved(None, None, tuple(candidates))


# --------------------------------------------------------------------------- interpolation

# Same grammar as the Node runner: upper-case names only; `$$` is a literal `$`.
_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:-([^}]*))?\}")


def interpolate(node: Any, env: Mapping[str, str], path: str, issues: list[Issue]) -> Any:
    """A copy of the parsed TOML with ``${VAR}`` / ``${VAR:-default}`` / ``$$`` expanded.

    An unset *or empty* variable without a default is an issue naming the
    variable and the key (as Node, which also treats empty as unset).
    """
    if isinstance(node, str):
        return _interpolate_string(node, env, path, issues)
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]", issues) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: interpolate(v, env, f"{path}.{k}" if path else k, issues) for k, v in node.items()
        }
    return node


def _interpolate_string(raw: str, env: Mapping[str, str], path: str, issues: list[Issue]) -> str:
    if "$" not in raw:
        return raw

    def expand(match: re.Match[str]) -> str:
        name, fallback = match.group(1), match.group(3)
        value = env.get(name)
        if value:
            return value
        if fallback is not None:
            return fallback
        issues.append(
            Issue(
                path,
                f"environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}} for a fallback)",
            )
        )
        return match.group(0)

    return "$".join(_PLACEHOLDER.sub(expand, segment) for segment in raw.split("$$"))


# --------------------------------------------------------------------------- validation


def _toml_type(value: Any) -> str:
    return {dict: "table", list: "array", str: "string", bool: "boolean", int: "integer"}.get(
        type(value), type(value).__name__
    )


def _validate_sources(
    mode: Mode,
    raw: Any,
    registry: Registry,
    issues: list[Issue],
    secrets: set[str],
    runner: RunnerConfig | None,
) -> list[SourceEntry]:
    if not isinstance(raw, dict):
        issues.append(Issue(mode, f"expected a table of [[{mode}.<kind>]] entries"))
        return []
    entries: list[SourceEntry] = []
    for kind, items in raw.items():
        where = f"{mode}.{kind}"
        try:
            spec = registry.get(mode, kind)
        except Exception as exc:  # a broken plugin is a config problem, not a crash
            issues.append(Issue(where, f'connector kind "{kind}" failed to load: {exc}'))
            continue
        if spec is None:
            available = registry.kinds(mode)
            listing = ", ".join(available) or "none"
            if kind in NODE_KINDS[mode]:
                issues.append(
                    Issue(
                        where,
                        f'connector kind "{kind}" is not available in this version '
                        f"(available {mode} kinds: {listing})",
                    )
                )
            else:
                hint = schema.did_you_mean(kind, available, f"{mode} kinds")
                issues.append(Issue(where, f'unknown {mode} connector kind "{kind}"; {hint}'))
            continue
        if isinstance(items, dict):
            issues.append(Issue(where, f"expected [[{where}]] (an array of tables), got [{where}]"))
            continue
        if not isinstance(items, list):
            issues.append(Issue(where, f"expected [[{where}]] entries, got a {_toml_type(items)}"))
            continue
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            path = f"{where}[{index}]"
            if not isinstance(item, dict):
                issues.append(Issue(path, f"expected a table, got a {_toml_type(item)}"))
                continue
            built = schema.build(spec.config_class, item, path, issues, secrets)
            name = item.get("name")
            if isinstance(name, str):
                if name in seen:
                    issues.append(
                        Issue(
                            f"{path}.name",
                            f'duplicate name "{name}" (also {where}[{seen[name]}]); '
                            "names must be unique within a kind",
                        )
                    )
                    built = None
                else:
                    seen[name] = index
            if mode == "pull" and isinstance(item.get("schedule"), str):
                tz = item.get("timezone") if isinstance(item.get("timezone"), str) else None
                if tz is None and runner is not None:
                    tz = runner.timezone
                problem = _schedule_problem(item["schedule"], tz, item.get("timezone"))
                if problem:
                    issues.append(Issue(f"{path}.{problem[0]}", problem[1]))
                    built = None
            if built is not None:
                entries.append(SourceEntry(mode, kind, index, built, spec))
    return entries


def _schedule_problem(expr: str, tz: str | None, own_tz: Any) -> tuple[str, str] | None:
    if isinstance(own_tz, str):
        problem = timezone_problem(own_tz)
        if problem:
            return "timezone", problem
    if tz is not None and timezone_problem(tz):
        tz = None  # reported on [runner] timezone already
    from .schedule import parse as parse_schedule

    try:
        parse_schedule(expr, tz)
    except ScheduleError as exc:
        return (
            "schedule",
            f'"{expr}" is not a schedule; expected "every <N><s|m|h|d>" or cron ({exc.reason})',
        )
    return None


def validate(
    data: Mapping[str, Any],
    *,
    registry: Registry | None = None,
    path: str | None = None,
    source: ConfigSource = "string",
    env: Mapping[str, str] | None = None,
) -> Config:
    """Interpolate and validate parsed TOML; raise :class:`ConfigError` listing every issue."""
    registry = registry or Registry.default()
    env = os.environ if env is None else env
    issues: list[Issue] = []
    secrets: set[str] = set()
    data = interpolate(dict(data), env, "", issues)

    for key in data:
        if key not in TOP_LEVEL:
            issues.append(
                Issue(
                    key,
                    "unknown top-level table; "
                    + schema.did_you_mean(key, list(TOP_LEVEL), "tables"),
                )
            )

    statewave: StatewaveConfig | None = None
    raw_sw = data.get("statewave")
    if raw_sw is None:
        issues.append(Issue("statewave", f"missing required [statewave] table; {FILE_SINK_HINT}"))
    elif not isinstance(raw_sw, dict):
        issues.append(Issue("statewave", f"expected a table, got a {_toml_type(raw_sw)}"))
    else:
        missing_url = "url" not in raw_sw
        if missing_url:
            issues.append(Issue("statewave.url", f"required key is missing; {FILE_SINK_HINT}"))
            # A stand-in url lets the other [statewave] keys be checked in this same pass.
            raw_sw = {"url": "file:-", **raw_sw}
        statewave = schema.build(StatewaveConfig, raw_sw, "statewave", issues, secrets)
        if missing_url:
            statewave = None

    runner = RunnerConfig()
    raw_runner = data.get("runner")
    if raw_runner is not None:
        if not isinstance(raw_runner, dict):
            issues.append(Issue("runner", f"expected a table, got a {_toml_type(raw_runner)}"))
        else:
            built = schema.build(RunnerConfig, raw_runner, "runner", issues, secrets)
            runner = built or runner
    # URL passwords of the state backend are secrets too.
    if runner.state.url:
        password = urlsplit(runner.state.url).password
        if password:
            secrets.add(password)

    pull = _validate_sources("pull", data.get("pull", {}), registry, issues, secrets, runner)
    push = _validate_sources("push", data.get("push", {}), registry, issues, secrets, runner)

    reserved = {"/healthz": "health", "/readyz": "readiness"}
    mounts = {e.mount_path: e.where for e in push}
    if runner.metrics.enabled:
        mpath = runner.metrics.path
        if mpath in reserved:
            issues.append(
                Issue("runner.metrics.path", f"{mpath} is the {reserved[mpath]} endpoint")
            )
        elif mpath in mounts:
            issues.append(
                Issue("runner.metrics.path", f"{mpath} is the mount path of {mounts[mpath]}")
            )

    if issues or statewave is None:
        noun = "problem" if len(issues) == 1 else "problems"
        where = f" in {path}" if path else ""
        raise ConfigError(f"{len(issues)} config {noun}{where}:", issues, source=path)
    return Config(
        statewave=statewave,
        runner=runner,
        pull=tuple(pull),
        push=tuple(push),
        path=path,
        source=source,
        secrets=frozenset(secrets),
    )


def parse_config(
    text: str,
    *,
    env: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    path: str | None = None,
    source: ConfigSource = "string",
) -> Config:
    """Parse TOML text and :func:`validate` it."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = path or "(string)"
        raise ConfigError(
            f"TOML syntax error in {where}:", [Issue("", _toml_error(exc))], source=path
        ) from None
    return validate(data, registry=registry, path=path, source=source, env=env)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)", message)
    if match:
        bare = message[: match.start()].strip()
        return f"line {match.group(1)}, column {match.group(2)}: {bare}"
    return message


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
) -> Config:
    """Find, read, interpolate and validate the config file.

    Search order as the Node runner (see :func:`resolve_path`). Raises
    :class:`ConfigNotFoundError` listing the searched places, or
    :class:`ConfigError` listing every problem.
    """
    env = os.environ if env is None else env
    resolved = resolve_path(path, env=env, cwd=cwd, home=home)
    if resolved.path is None or resolved.source is None:
        raise ConfigNotFoundError(
            "no statewave-connectors config file found; pass --config PATH, set "
            f"{ENV_CONFIG_VAR}, or create ./{CWD_FILE}",
            [Issue(f"[{src}]", str(p)) for src, p in resolved.searched],
        )
    shown = str(resolved.path)
    try:
        text = resolved.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigNotFoundError(
            f"config file not found: {shown} [{resolved.source}]", source=shown
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read config file {shown}: {reason}", source=shown) from None
    return parse_config(text, env=env, registry=registry, path=shown, source=resolved.source)
