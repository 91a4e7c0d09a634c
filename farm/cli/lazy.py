"""Library modules the CLI runs on first use, so that `farm --version`, `farm --help` and every
command's `--help` start without what other commands need (scipy, numpy, matplotlib, celery, redis,
the report and publish modules: about 2 s of imports before any command was chosen).

`lazy_module("farm.nightly.regress")` puts the module in `sys.modules` without running it
(`importlib.util.LazyLoader`); its first attribute access, or any `import` of it anywhere, runs it,
and from then on it is the ordinary module (the same object: a monkeypatch on either is on both).
A command module declares them at its top, beside its imports, with the real import for mypy:

    if TYPE_CHECKING:
        from farm.nightly import regress
    else:
        regress = lazy_module("farm.nightly.regress")  # scipy

and uses them as modules (`regress.detect(...)`). What a command's signature needs (its defaults,
its annotations: Typer reads them to build the command and its help) stays an ordinary import.
`when_imported(name, fn)` runs `fn(module)` once the module has run (at once if it has).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from types import ModuleType

# Modules made lazy here and not yet run, with what waits for them to run (`when_imported`).
_WAITING: dict[str, list[Callable[[ModuleType], None]]] = {}


class _ThenCallbacks(importlib.abc.Loader):
    """The module's own loader, then the callbacks waiting on the module. The module gets its own
    loader back; one that fails to run is lazy again, as it was: its next use runs it again (and
    raises again), as the next import of a module whose import failed does."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        before = dict(module.__dict__)
        spec.loader = module.__loader__ = self.loader
        try:
            self.loader.exec_module(module)
        except BaseException:
            module.__dict__.clear()  # not half a module: what ran before the failure goes
            module.__dict__.update(before)
            importlib.util.LazyLoader(self).exec_module(module)
            raise
        for fn in _WAITING.pop(spec.name, []):
            fn(module)


def lazy_module(name: str) -> ModuleType:
    """The module `name`: as imported if it is, else registered to run on its first use."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)  # imports the parent packages (the farm's are empty)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(_ThenCallbacks(spec.loader))
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _WAITING[name] = []
    loader.exec_module(module)  # makes it lazy: nothing of the module runs yet
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)  # as an import sets `package.module`
    return module


def when_imported(name: str, fn: Callable[[ModuleType], None]) -> None:
    """Call `fn(module)` once the module `name` has run: now if it has, else right after it runs
    (on its first use, before that use goes on)."""
    if name not in _WAITING and name in sys.modules:
        fn(sys.modules[name])
        return
    lazy_module(name)
    _WAITING[name].append(fn)
