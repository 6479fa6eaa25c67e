"""YAML files: read with one-line errors, class paths resolved, values checked against hints."""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def read_yaml(path: Path, error: type[ValueError]) -> tuple[str, Any]:
    """The text of a YAML file and what it holds; every failure is one line naming the file.

    Args:
        path: The file; it must exist.
        error: The exception to raise, e.g. :class:`RecipeError`.

    Raises:
        ValueError: (``error``) If the file cannot be read, is not UTF-8 text or not YAML.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"{path} is not a UTF-8 text file (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}); pass the YAML file itself"
        ) from err
    except OSError as err:
        raise error(f"{path} cannot be read ({err.strerror}); pass a readable YAML file") from err
    try:
        return text, yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {yaml_problem(err)}") from err


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: ``"line 3, column 7: <problem>"``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return (f"line {mark.line + 1}, column {mark.column + 1}: " if mark else "") + problem


def import_class(dotted: Any, base: type[T], base_name: str) -> type[T]:
    """The class named ``package.module.Class``, checked to be a subclass of ``base``.

    The object the name refers to is looked up, never called: a function, an instance or a
    class of another kind is refused before anything can run it. (Importing its module runs
    that module's top-level code, as any import does.)

    Args:
        dotted: The name, e.g. ``"lightning_accel.GradualPruning"``.
        base: The class it must derive from, e.g. ``lightning.pytorch.callbacks.Callback``.
        base_name: How messages name ``base``, e.g. ``"lightning.pytorch.callbacks.Callback"``.

    Raises:
        ModuleNotFoundError: If its module, or a package that module imports, is missing.
        ValueError: If ``dotted`` is not a dotted name, names nothing, or names something
            other than a subclass of ``base``.

    Example:
        >>> from lightning.pytorch.callbacks import Callback
        >>> import_class("os.system", Callback, "Callback")
        Traceback (most recent call last):
        ...
        ValueError: 'os.system' is a built-in function, not a class derived from Callback
    """
    if not isinstance(dotted, str) or not _DOTTED.fullmatch(dotted):
        raise ValueError(f"{dotted!r} is not a dotted class name such as package.module.Class")
    module_name, _, name = dotted.rpartition(".")
    if "__main__" in module_name.split("."):
        raise ValueError(
            f"{dotted!r} is inside a __main__ module, which runs a program when imported; "
            "name the class where it is defined"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise
    except ImportError as err:
        raise ValueError(f"{dotted!r} cannot be imported ({err})") from err
    target = getattr(module, name, None)
    if target is None:
        raise ValueError(f"{dotted!r} does not exist (module {module_name} has no {name})")
    if not isinstance(target, type):
        raise ValueError(f"{dotted!r} is {_kind(target)}, not a class derived from {base_name}")
    if not issubclass(target, base):
        raise ValueError(f"{dotted!r} is a class, but not a subclass of {base_name}")
    return target


def _kind(target: Any) -> str:
    if isinstance(target, types.BuiltinFunctionType):
        return "a built-in function"
    if inspect.isfunction(target) or inspect.ismethod(target):
        return "a function"
    if inspect.ismodule(target):
        return "a module"
    return f"a {type(target).__name__} object"


def signature_hints(target: type) -> dict[str, tuple[Any, Any]]:
    """``{argument: (type hint, default)}`` of a class's ``__init__``.

    Raises:
        TypeError: If ``target`` is not a class (so nothing else is ever inspected or called).
    """
    if not isinstance(target, type):
        raise TypeError(f"signature_hints takes a class; got {target!r}")
    fn = target.__init__  # type: ignore[misc]
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
    """Why ``value`` does not fit ``hint``, or ``None`` if it fits (or cannot be checked).

    A nested ``{class_path: ...}`` mapping is always refused: recipes build objects only in
    their top-level slots (model, data, trainer.callbacks, trainer.logger), where the class
    is checked first; anywhere else it would reach a constructor as a plain dict.
    """
    if isinstance(value, dict) and "class_path" in value:
        return (
            "must not be a {class_path: ...} object: recipes build objects only as the model, "
            "the data, trainer.callbacks and trainer.logger"
        )
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
    if hint in (os.PathLike, Path) or origin is os.PathLike:
        return None if isinstance(value, str) else "must be a path (a string)"
    if isinstance(value, (dict, list)) and isinstance(hint, type) and hint not in (object,):
        return f"must be {getattr(hint, '__name__', hint)}, not a {type(value).__name__}"
    return None  # classes, callables...: left to the constructor


def _describe(hint: Any) -> str:
    names = []
    for arg in typing.get_args(hint):
        names.append("null" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " or ".join(names)
