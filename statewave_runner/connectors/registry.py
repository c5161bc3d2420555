"""Which connector kinds exist: the built-ins plus third-party entry points.

Built-ins are imported lazily (a config that uses only ``markdown`` never
imports the GitHub module). Third-party packages register kinds through the
entry-point group ``statewave_runner.connectors``; an entry point resolves to a
:class:`ConnectorSpec` or an iterable of them.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterable
from typing import Literal

from .base import ConnectorSpec

ENTRY_POINT_GROUP = "statewave_runner.connectors"

Mode = Literal["pull", "push"]

# (mode, kind) -> "module:attribute" of its ConnectorSpec.
_BUILTINS: dict[tuple[Mode, str], str] = {
    ("pull", "markdown"): "statewave_runner.connectors.markdown:SPEC",
    ("pull", "github"): "statewave_runner.connectors.github:SPEC",
    ("push", "slack"): "statewave_runner.connectors.slack:PUSH_SPEC",
}

# Kinds the Node runner's config knows that this release does not ship yet.
# Naming them lets validation say "not available in this version" instead of
# "unknown kind", which would suggest a typo.
NODE_KINDS: dict[Mode, tuple[str, ...]] = {
    "pull": (
        "github",
        "markdown",
        "slack",
        "n8n",
        "discord",
        "zendesk",
        "intercom",
        "freshdesk",
        "notion",
        "gmail",
    ),
    "push": ("slack", "freshdesk", "zendesk", "intercom", "gmail"),
}

log = logging.getLogger("statewave_runner.connectors")


class Registry:
    """A set of connector kinds. ``Registry.default()`` is built-ins + entry points."""

    def __init__(self, specs: Iterable[ConnectorSpec] = (), *, builtins: bool = True):
        self._lazy: dict[tuple[Mode, str], str] = dict(_BUILTINS) if builtins else {}
        self._specs: dict[tuple[Mode, str], ConnectorSpec] = {}
        self._lock = threading.Lock()
        self._plugins_pending = False
        for spec in specs:
            self.register(spec)

    @classmethod
    def default(cls) -> Registry:
        """Built-in kinds plus every kind installed under the entry-point group.

        Entry points are scanned on the first question the built-ins cannot
        answer (an unknown kind, or a listing): importlib.metadata costs about
        a megabyte of resident memory that a config of built-ins never needs.
        """
        reg = cls()
        reg._plugins_pending = True
        return reg

    def _load_plugins(self) -> None:
        with self._lock:
            if not self._plugins_pending:
                return
            self._plugins_pending = False
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken plugin must not take the runner down
                log.warning("connector entry point %s failed to load: %s", ep.name, exc)
                continue
            specs = [loaded] if isinstance(loaded, ConnectorSpec) else list(loaded)
            for spec in specs:
                if isinstance(spec, ConnectorSpec):
                    self.register(spec)
                else:
                    log.warning(
                        "connector entry point %s gave %r, not a ConnectorSpec", ep.name, spec
                    )

    def register(self, spec: ConnectorSpec) -> None:
        """Add (or replace) a kind."""
        with self._lock:
            self._specs[(spec.mode, spec.kind)] = spec

    def kinds(self, mode: Mode) -> list[str]:
        """Sorted kind names available in ``mode``."""
        self._load_plugins()
        names = {k for (m, k) in self._lazy if m == mode} | {
            k for (m, k) in self._specs if m == mode
        }
        return sorted(names)

    def get(self, mode: Mode, kind: str) -> ConnectorSpec | None:
        """The spec of a kind, importing a built-in on first use; ``None`` if unknown."""
        key = (mode, kind)
        with self._lock:
            spec = self._specs.get(key)
            if spec is not None:
                return spec
            target = self._lazy.get(key)
        if target is None:
            if self._plugins_pending:
                self._load_plugins()
                return self.get(mode, kind)
            return None
        module_name, _, attr = target.partition(":")
        loaded = getattr(importlib.import_module(module_name), attr)
        if not isinstance(loaded, ConnectorSpec):
            raise TypeError(f"{target} is not a ConnectorSpec")
        with self._lock:
            self._specs.setdefault(key, loaded)
            return self._specs[key]
