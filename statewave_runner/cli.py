"""Command line: ``python -m statewave_runner`` / ``statewave-runner``.

Exit codes: 0 ok, 1 config or usage error, 2 runtime failure. An operator
mistake never prints a Python traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from . import __version__

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_RUNTIME = 2


class UsageError(Exception):
    """Bad command-line usage (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    # argparse exits with 2 on usage errors; 2 means "runtime failure" here.
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        metavar="PATH",
        help="config file (default: $STATEWAVE_CONNECTORS_CONFIG, ./statewave-connectors.toml, "
        "$XDG_CONFIG_HOME/statewave-connectors/config.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (exposed for tests and docs)."""
    parser = _Parser(
        prog="statewave-runner",
        description="Keep a Statewave server fed from pull sources and webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"statewave-runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon until SIGTERM/SIGINT")
    _add_config(run)
    run.add_argument("--host", help="override [runner] host")
    run.add_argument("--port", type=int, help="override [runner] port")
    run.add_argument("--log-format", choices=("text", "json"), help="override [runner] log_format")
    run.add_argument(
        "--log-level",
        choices=("debug", "info", "warn", "warning", "error", "critical"),
        help="override [runner] log_level",
    )

    validate = sub.add_parser("validate", help="check a config; print every problem")
    _add_config(validate)

    describe = sub.add_parser("describe", help="what a config would run (secrets redacted)")
    _add_config(describe)
    describe.add_argument("--json", action="store_true", help="machine-readable output")

    sync = sub.add_parser("sync", help="run one pull tick now and print what it produced")
    _add_config(sync)
    sync.add_argument("source", metavar="KIND/NAME")
    sync.add_argument("--dry-run", action="store_true", help="queue nothing, move no cursor")
    sync.add_argument("--max-items", type=int, metavar="N", help="cap episodes for this tick")
    sync.add_argument("--from-scratch", action="store_true", help="ignore the stored cursor")
    sync.add_argument("--json", action="store_true", help="one JSON episode per line")

    sched = sub.add_parser("schedule", help="print the next fire times of a schedule")
    sched.add_argument("expression", metavar="EXPR")
    sched.add_argument("--tz", metavar="ZONE", help="IANA time zone (default UTC)")
    sched.add_argument("-n", type=int, default=5, metavar="N", help="how many (default 5)")

    sub.add_parser("connectors", help="list connector kinds and their config keys")

    state = sub.add_parser(
        "state",
        help="inspect or edit cursors and the outbox",
        description="state cursors [list [--json] | get KIND/NAME | set KIND/NAME VALUE | "
        "delete KIND/NAME]; state outbox [stats | peek N [--dead] | retry-dead [--limit N]]",
    )
    _add_config(state)
    state.add_argument("words", nargs=argparse.REMAINDER, metavar="cursors|outbox ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        print(f"try: {parser.prog} --help", file=sys.stderr)
        return EXIT_CONFIG
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    from .errors import ConfigError, StatewaveRunnerError

    try:
        handler = _COMMANDS[args.command]
        return handler(args)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:
        _print_config_error(exc, sys.stderr)
        return EXIT_CONFIG
    except StatewaveRunnerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _print_config_error(exc: Any, out: TextIO) -> None:
    from .errors import ConfigNotFoundError

    print(f"config error: {exc.args[0]}", file=out)
    for issue in exc.issues:
        print(f"  {issue}", file=out)
    if isinstance(exc, ConfigNotFoundError) and exc.issues:
        print("  (searched the places above, in that order)", file=out)


def _load(args: argparse.Namespace) -> Any:
    from .config import load_config

    return load_config(getattr(args, "config", None))


# --------------------------------------------------------------------------- run


def banner(config: Any, address: tuple[str, int], state_note: str, sink_note: str) -> str:
    """The start-up banner, in the Node runner's shape (plus state and sink lines)."""
    host, port = address
    lines = [
        "statewave-runner run",
        f"config: {config.path or '(string)'} [{config.source}]",
        f"listening: http://{host}:{port}",
    ]
    if config.pull:
        lines.append("pull schedules:")
        lines.extend(f"  {e.key} ({e.schedule})" for e in config.pull)
    if config.push:
        lines.append("push receivers:")
        lines.extend(f"  {e.key} → {e.mount_path}" for e in config.push)
    lines.append(f"state: {state_note}")
    lines.append(f"sink: {sink_note}")
    metrics = config.runner.metrics
    lines.append(
        f"health: /healthz, /readyz{', metrics: ' + metrics.path if metrics.enabled else ''}"
    )
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def _state_note(config: Any) -> str:
    from .runner import describe_config

    state = describe_config(config)["state"]
    if state["kind"] == "memory":
        return "memory (nothing survives a restart: cursors and queued episodes are lost)"
    where = state.get("path") or state.get("url") or ""
    return f"{state['kind']} {where}".strip()


def _sink_note(config: Any) -> str:
    from .redact import redact_url

    sw = config.statewave
    if sw.is_file_sink:
        return f"file {sw.file_path} (local JSON Lines; no Statewave server)"
    return f"statewave {redact_url(sw.url)}"


@functools.cache
def _glibc() -> Any:
    """The C library through ctypes when it is glibc (Linux), else None (looked up once)."""
    if sys.platform != "linux":
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        import ctypes

        return ctypes.CDLL(None)
    except (ImportError, OSError, ValueError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); True if it ran.

    Start-up (importing ~200 modules, reading the config) leaves ~1 MB of
    freed but still resident heap behind, in holes ``free()`` cannot return,
    and ticks, deliveries and requests leave more in every thread's arena.
    The daemon calls this when it is ready and then every 10 s while it
    serves (~20 us when nothing is free).
    """
    libc = _glibc()
    if libc is None:
        return False
    try:
        libc.malloc_trim(0)
    except AttributeError:
        return False
    return True


def cmd_run(args: argparse.Namespace) -> int:
    from .config import Config
    from .log import configure_logging
    from .redact import Redactor
    from .runner import Runner

    config: Config = _load(args)
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port: expected 0..65535, got {args.port}")
        overrides["port"] = args.port
    if args.log_format is not None:
        overrides["log_format"] = args.log_format
    if args.log_level is not None:
        overrides["log_level"] = args.log_level
    if overrides:
        config = dataclasses.replace(config, runner=dataclasses.replace(config.runner, **overrides))
    configure_logging(
        fmt=config.runner.log_format,
        level=config.runner.log_level,
        redactor=Redactor(config.secrets),
        background=True,
    )
    runner = Runner(config)

    def announce(r: Runner) -> None:
        print(banner(config, r.address, _state_note(config), _sink_note(config)), flush=True)
        release_free_memory()  # what start-up left behind

    # And what ticks, deliveries and requests freed since: ~20 us when nothing is free.
    return runner.serve_forever(on_ready=announce, housekeeping=release_free_memory)


# --------------------------------------------------------------------------- validate / describe


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    from .state import check_driver

    check_driver(config.runner.state.kind)
    print(
        f"config OK: {config.path} [{config.source}]: {len(config.pull)} pull source(s), "
        f"{len(config.push)} push receiver(s), state {config.runner.state.kind}, "
        f"sink {_sink_note(config)}"
    )
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    from .runner import describe_config

    config = _load(args)
    info = describe_config(config)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"config: {config.path} [{config.source}]")
    print(f"listen: http://{info['listen']['host']}:{info['listen']['port']}")
    print(f"state: {_state_note(config)}")
    print(f"sink: {_sink_note(config)}")
    m = info["metrics"]
    print(f"metrics: {m['path']} (auth {m['auth']})" if m["enabled"] else "metrics: disabled")
    print("pull schedules:" if info["pull"] else "pull schedules: none")
    for p in info["pull"]:
        flags = " [dry run]" if p.get("dry_run") else ""
        print(f"  {p['key']} ({p['schedule']}, {p['timezone']}){flags}")
        for t in p["next_fires"]:
            print(f"    next: {t}")
    print("push receivers:" if info["push"] else "push receivers: none")
    for p in info["push"]:
        print(f"  {p['key']} → {p['path']}")
    print(f"mounted: {', '.join(info['mounted'])}")
    return EXIT_OK


# --------------------------------------------------------------------------- sync


def cmd_sync(args: argparse.Namespace) -> int:
    from .connectors.base import Episode
    from .log import configure_logging
    from .redact import Redactor
    from .runner import Runner

    config = _load(args)
    if args.max_items is not None and args.max_items < 1:
        raise UsageError(f"--max-items: expected a positive integer, got {args.max_items}")
    configure_logging(
        fmt=config.runner.log_format,
        level=config.runner.log_level,
        redactor=Redactor(config.secrets),
    )
    runner = Runner(config)

    def show(episodes: Sequence[Episode]) -> None:
        for e in episodes:
            if args.json:
                print(json.dumps(e.to_dict(), ensure_ascii=False), flush=True)
            else:
                first = e.text.splitlines()[0] if e.text else ""
                print(f"{e.occurred_at}  {e.kind}  {e.subject}  {first[:100]}", flush=True)

    result = runner.sync_once(
        args.source,
        dry_run=True if args.dry_run else None,
        max_items=args.max_items,
        from_scratch=args.from_scratch,
        on_episodes=show,
    )
    summary = (
        f"{result.key}: {result.outcome}, {result.emitted} episode(s), {result.queued} queued"
        f"{' (dry run)' if result.dry_run else ''}, {result.duration * 1000:.0f} ms"
    )
    print(summary, file=sys.stderr)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
    return EXIT_OK if result.outcome == "ok" else EXIT_RUNTIME


# --------------------------------------------------------------------------- schedule / connectors


def cmd_schedule(args: argparse.Namespace) -> int:
    from .errors import ScheduleError
    from .schedule import format_fire_times

    if args.n < 1:
        raise UsageError(f"-n: expected a positive integer, got {args.n}")
    try:
        print(format_fire_times(args.expression, args.tz, args.n))
    except ScheduleError as exc:
        print(f"not a schedule: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_connectors(args: argparse.Namespace) -> int:
    from . import schema
    from .connectors.registry import Registry

    registry = Registry.default()
    for mode in ("pull", "push"):
        for kind in registry.kinds(mode):
            spec = registry.get(mode, kind)
            if spec is None:
                continue
            print(f"[[{mode}.{kind}]]" + (f"  {spec.summary}" if spec.summary else ""))
            for f in schema.fields_of(spec.config_class):
                req = "required" if f.required else f"default {json.dumps(f.default)}"
                tags = ", secret" if f.secret else ""
                doc = f"  {f.doc}" if f.doc else ""
                print(f"  {f.name} ({f.type_label}, {req}{tags}){doc}")
            print()
    return EXIT_OK


# --------------------------------------------------------------------------- state


def cmd_state(args: argparse.Namespace) -> int:
    from .runner import open_configured_state
    from .state.admin import FAILED, OK, USAGE_TEXT, run_state_command

    if not args.words:
        raise UsageError(USAGE_TEXT.rstrip())
    backend = open_configured_state(_load(args))
    try:
        result = run_state_command(backend, args.words)
    finally:
        backend.close()
    sys.stdout.write(result.out)
    sys.stderr.write(result.err)
    # admin's codes (0 done, 1 not found, 2 usage, 3 backend failed) onto ours.
    if result.code == OK:
        return EXIT_OK
    return EXIT_RUNTIME if result.code == FAILED else EXIT_CONFIG


_COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "describe": cmd_describe,
    "sync": cmd_sync,
    "schedule": cmd_schedule,
    "connectors": cmd_connectors,
    "state": cmd_state,
}


def _silence_library_logging() -> None:
    # Before configure_logging runs, keep stray library warnings off stdout.
    logging.getLogger("statewave_runner").addHandler(logging.NullHandler())


_silence_library_logging()
