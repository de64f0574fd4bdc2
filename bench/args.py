"""``k=v,k2=v2`` arguments checked against a constructor's keyword-only parameters.

CLI flags equal API kwargs: ``--generator-args steps=50,guidance=3`` becomes
``Ldm3dGenerator(context, steps=50, guidance=3.0)``. A key the constructor does not take is an error
with a "did you mean" — never silently ignored.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable

from core.names import did_you_mean


class ArgumentError(ValueError):
    pass


def parse_kv(text: str | None) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}``. Values may not contain commas."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ArgumentError(f"argument {part!r} is not of the form key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parameters(target: Callable, skip: tuple[str, ...] = ("self", "context")) -> dict[str, inspect.Parameter]:
    fn = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(fn)
    return {n: p for n, p in sig.parameters.items()
            if n not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _convert(value: Any, annotation: Any, name: str, owner: str):
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        annotation = args[0] if args else str
    try:
        if annotation is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is Path:
            return Path(value)
    except ValueError:
        raise ArgumentError(f"{owner}: argument {name}={value!r} is not a valid "
                            f"{getattr(annotation, '__name__', annotation)}") from None
    return value


def bind_args(target: Callable, raw: dict[str, Any], owner: str,
              skip: tuple[str, ...] = ("self", "context")) -> dict[str, Any]:
    """Check ``raw`` against ``target``'s parameters and convert strings to the annotated types."""
    params = parameters(target, skip)
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolved forward references: fall back to no conversion
        hints = {}
    out = {}
    for k, v in raw.items():
        if k not in params:
            hint = did_you_mean(k, params, 2)
            accepted = ", ".join(params) or "none"
            raise ArgumentError(f"{owner}: unknown argument {k!r}{hint} (accepted: {accepted})")
        out[k] = _convert(v, hints.get(k, str), k, owner)
    return out
