"""A typed registry with lazy auto-discovery of plug-ins and did-you-mean errors.

Usage::

    METHODS = Registry("method", discover=("baselines", "purer"))

    @METHODS.register("weight_average")
    class WeightAverage(MetaLearner): ...

    METHODS.get("weight_avrage")  # BenchError: unknown method 'weight_avrage'; did you mean ...

On the first lookup the registry imports every module of the packages named in ``discover``
(``pkgutil.iter_modules``), so adding a plug-in never means editing a list.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import traceback
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bench.errors import BenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object table for one kind of plug-in (methods, datasets, architectures, ...)."""

    def __init__(self, kind: str, discover: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._discover = discover
        self._discovered = not discover
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (snake_case, unique)."""
        if not name.replace("_", "").isalnum() or name.lower() != name:
            raise ValueError(f"{self.kind} key {name!r} must be snake_case")

        def decorator(obj: T) -> T:
            previous = self._entries.get(name)
            if previous is not None and previous is not obj:
                # the same definition re-imported (a module loaded twice), not another one of one name
                same = (getattr(previous, "__module__", None), getattr(previous, "__qualname__", None)) == (
                    getattr(obj, "__module__", ""),
                    getattr(obj, "__qualname__", ""),
                )
                if not same:
                    raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def _ensure_discovered(self) -> None:
        if self._discovered:
            return
        for package_name in self._discover:
            package = importlib.import_module(package_name)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    _import_plugin(f"{package_name}.{info.name}", info, self.kind)
        self._discovered = True  # only once every plug-in imported: a failure is raised again

    def names(self) -> list[str]:
        """All registered keys, sorted."""
        self._ensure_discovered()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry for ``name``; a BenchError with suggestions if there is none."""
        self._ensure_discovered()
        if name in self._entries:
            return self._entries[name]
        raise BenchError(unknown_key_message(self.kind, name, self.names()))

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) pairs in name order."""
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._ensure_discovered()
        return name in self._entries


def _import_plugin(module_name: str, info: pkgutil.ModuleInfo, kind: str) -> None:
    """Import one discovered plug-in module; a BenchError naming its file if that fails.

    Every module of a plug-in package is imported on the first lookup, so one broken or
    half-written file would otherwise stop every run with a bare traceback from the import system.
    """
    try:
        importlib.import_module(module_name)
    except Exception as error:  # any import-time failure of a user's module
        folder = str(getattr(info.module_finder, "path", "?"))
        inside = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(folder)]
        where = f" at {inside[-1].filename}:{inside[-1].lineno}" if inside else ""
        raise BenchError(
            f"could not import {kind} plug-in module {module_name!r} (in {folder}){where}: "
            f"{type(error).__name__}: {error}. Every module of that package not starting with '_' "
            f"is imported to find the registered {kind}s: fix the module (if it is a plug-in of "
            f"your own, renaming it to start with '_' or removing it leaves it out)"
        ) from error


def unknown_key_message(kind: str, name: str, valid: list[str]) -> str:
    """``unknown method 'x'; did you mean 'y'? available: a, b`` (the suggestion only if close)."""
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    return f"unknown {kind} {name!r}{hint} available: {', '.join(valid) or '(none)'}"


def first_doc_line(obj: object) -> str:
    """First line of an object's docstring, for one-line listings."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
