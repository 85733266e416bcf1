"""One small registry helper for everything found by name: extractors, handcrafted families, backbone
engines and classifiers (as timm's model registry: a decorator registers, a duplicate name is a bug, and
the entries of one package folder are found by importing its modules once, so adding one is one module)."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, Sequence, TypeVar

from blastscan.errors import BlastscanError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to entries of one kind.

    Parameters
    ----------
    kind : str
        What an entry is, for messages (``"classifier"``, ``"feature set"``).
    package : str, optional
        The one package whose modules register entries when imported (``"blastscan.classifiers"``).
        They are imported on the first lookup, not when the registry is made. Modules whose name
        starts with ``_`` are skipped.
    modules : sequence of str, optional
        Modules imported on the first lookup too: kinds of entries that each live in one module outside
        ``package`` (the deep backbones beside the folder of handcrafted families).

    Examples
    --------
    >>> engines = Registry("engine")
    >>> @engines.register("fast")
    ... def run_fast(x):
    ...     return x
    >>> engines.get("fast") is run_fast
    True
    """

    def __init__(self, kind: str, package: str | None = None, modules: Sequence[str] = ()):
        self.kind = kind
        self.package = package
        self.modules = tuple(modules)
        self._entries: dict[str, T] = {}
        self._discovered = package is None and not self.modules

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """Register ``entry`` as ``name``; without ``entry``, a decorator that registers what it decorates
        and returns it unchanged. A name registered twice raises ``ValueError`` (two modules claiming one
        name is a bug, never something to settle silently)."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def remove(self, name: str) -> None:
        """Forget ``name`` (nothing happens when it is not registered): for entries that a test registers."""
        self._entries.pop(name, None)

    @contextlib.contextmanager
    def restored(self, *, rediscover: bool = False) -> Iterator["Registry[T]"]:
        """A block after which the registry is as before it: entries registered inside (a test's own
        families) are forgotten. ``rediscover``: the package's modules are looked through again on the next
        lookup, so a module added to its path is found (those imported already are not imported twice)."""
        self.discover()  # the package's own entries are registered before the block, so they are kept after it
        saved = dict(self._entries)
        self._discovered = not rediscover
        try:
            yield self
        finally:
            self._entries, self._discovered = saved, True

    def discover(self) -> None:
        """Import every module of :attr:`package`, then :attr:`modules`, once, so their registrations have run."""
        if self._discovered:
            return
        self._discovered = True  # before importing: a module may look names up while it registers
        found = []
        if self.package is not None:
            pkg = importlib.import_module(self.package)
            found = [f"{self.package}.{info.name}" for info in pkgutil.iter_modules(pkg.__path__)
                     if not info.name.startswith("_")]
        for module in [*found, *self.modules]:
            importlib.import_module(module)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name raises :class:`BlastscanError` listing the known."""
        self.discover()
        try:
            return self._entries[name]
        except KeyError:
            raise BlastscanError(f"{self.kind} '{name}'", f"unknown; choose from: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        self.discover()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, entry)`` pairs in name order."""
        self.discover()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)
