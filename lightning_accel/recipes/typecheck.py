"""Checking plain YAML values against a callable's type hints, with errors that name the key."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union


def signature_hints(target: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """``{argument: (type hint, default)}`` of a class's ``__init__`` or a function."""
    fn = target.__init__ if inspect.isclass(target) else target  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to no hints
        hints = {}
    params = inspect.signature(fn).parameters
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or ``None`` if it fits (or cannot be checked)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    if origin is Literal:
        return None if value in args else f"must be one of {list(args)}"
    if origin in (Union, types.UnionType):
        problems = [type_problem(value, a) for a in args]
        if any(p is None for p in problems):
            return None
        literals = [v for a in args if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        if literals:
            return f"must be one of {literals}" + (" or null" if type(None) in args else "")
        return f"must be {_describe(hint)}"
    if hint is type(None):
        return None if value is None else "must be null"
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return (
            None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
        )
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "must be a number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    sequence_types = (list, tuple, collections.abc.Sequence)
    if origin in sequence_types or hint in sequence_types:
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        inner = args[0] if args else Any
        for item in value:
            problem = type_problem(item, inner)
            if problem:
                return f"items {problem.removeprefix('must be ')}: got {item!r}"
        return None
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        return None if isinstance(value, dict) else "must be a mapping"
    return None  # classes, callables, paths...: left to the constructor


def _describe(hint: Any) -> str:
    names = []
    for arg in typing.get_args(hint):
        names.append("null" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " or ".join(names)
