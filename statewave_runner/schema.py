"""Validating TOML tables against frozen config dataclasses.

Pure functions over plain data. A config section or connector kind declares
its keys as a dataclass (see :func:`statewave_runner.connectors.base.option`);
:func:`build` checks a parsed TOML table against it and appends *every*
problem to an issue list with its dotted path, so an operator sees the whole
punch list in one pass.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .errors import Issue
from .redact import MASK, redact_url

T = TypeVar("T")

_NONE = type(None)


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One config key, for listings (``connectors``) and redaction."""

    name: str
    type_label: str
    required: bool
    default: Any
    doc: str
    secret: bool
    example: str | None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fields_of(cls: type) -> list[FieldInfo]:
    """The keys a config dataclass accepts, in declaration order."""
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default: Any = None
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append(
            FieldInfo(
                name=f.name,
                type_label=type_label(hints[f.name]),
                required=required,
                default=default,
                doc=str(f.metadata.get("doc") or ""),
                secret=bool(f.metadata.get("secret")),
                example=f.metadata.get("example"),
            )
        )
    return out


def type_label(tp: Any) -> str:
    """A human name for an annotation: ``string``, ``list of strings``, ``"a" | "b"``."""
    origin = get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(_show(v) for v in get_args(tp))
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not _NONE]
        return " or ".join(type_label(a) for a in arms)
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = type_label(args[0]) if args else "value"
        return f"list of {_plural(inner)}"
    if origin in (dict, Mapping) or tp is dict:
        return "table"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {
        str: "string",
        int: "integer",
        float: "number",
        bool: "boolean",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(label: str) -> str:
    if " | " in label or label.endswith("s"):
        return label
    if label.startswith("integer") or label.startswith("string") or label.startswith("number"):
        return label + "s"
    if label == "boolean":
        return "booleans"
    return label


_TOML_TYPE = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    list: "array",
    dict: "table",
}


def _show(value: Any) -> str:
    """Render a value for an error message (TOML-ish, truncated)."""
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "{table}"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + '..."'


def _describe_value(value: Any, secret: bool) -> str:
    kind = _TOML_TYPE.get(type(value), type(value).__name__)
    if secret:
        return f"a {kind}"
    return f"{_show(value)} ({kind})"


def did_you_mean(word: str, known: list[str], noun: str = "keys") -> str:
    """``did you mean "x"?``, or the list of known names, for an unknown-name message."""
    import difflib  # only on the error path

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return f"known {noun}: " + ", ".join(known) if known else f"no {noun} are accepted here"


def _convert(
    value: Any, tp: Any, path: str, issues: list[Issue], secrets: set[str], secret: bool
) -> tuple[bool, Any]:
    """Check ``value`` against annotation ``tp``; returns (ok, converted value)."""
    origin = get_origin(tp)
    if tp is Any:
        return True, value
    if origin is Literal:
        allowed = get_args(tp)
        for option in allowed:
            if value == option and type(value) is type(option):
                return True, value
        shown = ", ".join(_show(a) for a in allowed)
        issues.append(Issue(path, f"expected one of {shown}; got {_describe_value(value, secret)}"))
        return False, None
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not _NONE]
        for arm in arms:
            trial: list[Issue] = []
            ok, conv = _convert(value, arm, path, trial, secrets, secret)
            if ok:
                return True, conv
        if len(arms) == 1:
            return _convert(value, arms[0], path, issues, secrets, secret)
        issues.append(
            Issue(path, f"expected {type_label(tp)}, got {_describe_value(value, secret)}")
        )
        return False, None
    if origin in (list, tuple):
        if not isinstance(value, list):
            issues.append(
                Issue(path, f"expected {type_label(tp)}, got {_describe_value(value, secret)}")
            )
            return False, None
        elements = [a for a in get_args(tp) if a is not Ellipsis]
        inner: Any = elements[0] if elements else Any
        ok_all = True
        items = []
        for i, element in enumerate(value):
            ok, conv = _convert(element, inner, f"{path}[{i}]", issues, secrets, secret)
            ok_all = ok_all and ok
            items.append(conv)
        return ok_all, (tuple(items) if origin is tuple else items)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            issues.append(Issue(path, f"expected a table, got {_describe_value(value, secret)}"))
            return False, None
        pair = get_args(tp)
        inner = pair[1] if len(pair) == 2 else Any
        ok_all = True
        out = {}
        for key, element in value.items():
            ok, conv = _convert(element, inner, f"{path}.{key}", issues, secrets, secret)
            ok_all = ok_all and ok
            out[key] = conv
        return ok_all, out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            issues.append(Issue(path, f"expected a table, got {_describe_value(value, secret)}"))
            return False, None
        built = build(tp, value, path, issues, secrets)
        return built is not None, built
    if tp is bool:
        if isinstance(value, bool):
            return True, value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
    elif tp is str:
        if isinstance(value, str):
            if secret:
                secrets.add(value)
            return True, value
    elif isinstance(tp, type) and isinstance(value, tp):
        return True, value
    article = "an" if type_label(tp)[0] in "aeiou" else "a"
    issues.append(
        Issue(path, f"expected {article} {type_label(tp)}, got {_describe_value(value, secret)}")
    )
    return False, None


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str, issues: list[Issue]) -> bool:
    ok = True
    lo, hi, pattern = meta.get("min"), meta.get("max"), meta.get("pattern")
    numbers = (
        [value]
        if isinstance(value, int | float) and not isinstance(value, bool)
        else [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        if isinstance(value, list | tuple)
        else []
    )
    for number in numbers:
        if lo is not None and number < lo:
            issues.append(Issue(path, f"must be >= {_num(lo)}, got {_num(number)}"))
            ok = False
        if hi is not None and number > hi:
            issues.append(Issue(path, f"must be <= {_num(hi)}, got {_num(number)}"))
            ok = False
    if pattern and isinstance(value, str) and not re.fullmatch(pattern, value):
        issues.append(Issue(path, f"{_show(value)} must match {pattern}"))
        ok = False
    return ok


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def build(
    cls: type[T],
    raw: Mapping[str, Any],
    path: str,
    issues: list[Issue],
    secrets: set[str] | None = None,
) -> T | None:
    """Validate ``raw`` against dataclass ``cls``.

    Appends one :class:`Issue` per problem (unknown key with a did-you-mean,
    missing required key, wrong type, out-of-range number, pattern mismatch,
    then the dataclass's own ``check()`` rules) and returns the instance, or
    ``None`` if anything was wrong. String values of secret fields are added
    to ``secrets``.
    """
    if secrets is None:
        secrets = set()
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    before = len(issues)
    known = list(fields)
    for key in raw:
        if key not in fields:
            issues.append(Issue(f"{path}.{key}", f"unknown key; {did_you_mean(key, known)}"))
    values: dict[str, Any] = {}
    for name, f in fields.items():
        secret = bool(f.metadata.get("secret"))
        where = f"{path}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                issues.append(Issue(where, f"required key is missing ({type_label(hints[name])})"))
            continue
        ok, converted = _convert(raw[name], hints[name], where, issues, secrets, secret)
        if ok and _check_bounds(converted, f.metadata, where, issues):
            values[name] = converted
    if len(issues) > before:
        return None
    try:
        instance = cls(**values)
    except (TypeError, ValueError) as exc:
        issues.append(Issue(path, str(exc)))
        return None
    check = getattr(instance, "check", None)
    if callable(check):
        for key, message in check():
            issues.append(Issue(f"{path}.{key}" if key else path, message))
    return instance if len(issues) == before else None


def redacted(instance: Any) -> Any:
    """A plain-data copy of a config dataclass with secrets masked.

    Secret fields become ``"***"``; any string that looks like a URL with a
    password has the password masked.
    """
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(instance):
            value = getattr(instance, f.name)
            if f.metadata.get("secret") and value is not None:
                out[f.name] = MASK
            else:
                out[f.name] = redacted(value)
        return out
    if isinstance(instance, list | tuple):
        return [redacted(v) for v in instance]
    if isinstance(instance, dict):
        return {k: redacted(v) for k, v in instance.items()}
    if isinstance(instance, str) and "://" in instance:
        return redact_url(instance)
    return instance
