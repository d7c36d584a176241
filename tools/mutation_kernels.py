"""Compiled numba kernels under mutmut (``make mutation``, modules with ``kernels=...`` in tools/mutation.py).

mutmut skips decorated functions, so a kernel written ``@jit def k(...)`` is never mutated. In the scratch copy
only, tools/mutation.py rewrites it as a plain ``def k(...)`` followed by

    k = _mutmut_kernel(jit, k, globals(), helper=False)

so mutmut mutates ``k`` like any function: ``k`` becomes its trampoline, and the original and every mutant are
plain functions in the dict ``mutants_x_k__mutmut``. This file (copied into the scratch package as
``_mutmut_kernels.py``) then compiles them with the kernel's own decorator, so the tests run the mutants as
compiled code, at compiled speed, with numba's semantics (a mutant numba cannot compile fails its tests):

* a kernel called from Python keeps its trampoline; each entry of its mutants dict is replaced by a wrapper that
  compiles that variant on its first call (the original with the decorator's on-disk cache, so a test worker
  loads it instead of compiling it);
* a *helper*, a kernel called from other kernels (``@inline`` scalar helpers), must be a numba dispatcher for
  its callers to compile, so its name is bound to the compiled original. While one of its mutants is active
  (mutmut's ``MUTANT_UNDER_TEST``), the module's Python-called kernels are compiled again, uncached, against a
  copy of the module's globals in which the helper is that mutant. During mutmut's stats run a kernel records
  a hit for every helper it reaches, so mutmut knows which tests cover the helper.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable

from mutmut.core import MutmutCallStack
from mutmut.mutation.trampoline import get_mutant_under_test
from mutmut.stats import record_trampoline_hit
from numba.core.caching import NullCache

_REGISTRIES: dict[str, "_Registry"] = {}


class _Registry:
    """The kernels of one module: its globals, its helpers, and the globals overlays of active helper mutants."""

    def __init__(self, module_globals: dict):
        self.globals = module_globals
        self.module = module_globals["__name__"]
        self.helpers: dict[str, tuple[Callable, dict]] = {}  # name -> (decorator, mutants dict)
        self._overlays: dict[str, dict] = {}

    def helper_mutant(self, active: str) -> str | None:
        """``active`` if it names a mutant of one of this module's helpers."""
        module, _, mutant = active.rpartition(".")
        if module != self.module or "__mutmut_" not in mutant:
            return None
        mangled = mutant.partition("__mutmut_")[0]
        return mutant if any(mangled == f"x_{h}" for h in self.helpers) else None

    def overlay(self, mutant: str) -> dict:
        """A copy of the module's globals in which every helper is compiled afresh, the mutated one from
        ``mutant``; everything compiled against it is uncached (numba's cache would return the original)."""
        if mutant not in self._overlays:
            g = dict(self.globals)
            for name, (decorator, mutants) in self.helpers.items():
                src = mutants[mutant] if mutant.partition("__mutmut_")[0] == f"x_{name}" else mutants["_mutmut_orig"]
                g[name] = _uncached(decorator, _rebind(src, g))
            self._overlays[mutant] = g
        return self._overlays[mutant]

    def helpers_reached(self, func: Callable) -> set[str]:
        """The helpers ``func`` calls, directly or through other helpers (global names in the bytecode)."""
        seen: set[str] = set()
        todo = [func.__code__]
        while todo:
            code = todo.pop()
            for name in code.co_names:
                if name in self.helpers and name not in seen:
                    seen.add(name)
                    todo.append(self.helpers[name][1]["_mutmut_orig"].__code__)
            todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        return seen


def _rebind(func: Callable, module_globals: dict) -> Callable:
    out = types.FunctionType(func.__code__, module_globals, func.__name__, func.__defaults__, func.__closure__)
    out.__qualname__, out.__module__ = func.__qualname__, func.__module__
    return out


def _uncached(decorator: Callable, func: Callable) -> Any:
    dispatcher = decorator(func)
    dispatcher._cache = NullCache()
    return dispatcher


class _CompiledVariant:
    """Stands in for one function of a kernel's mutants dict: compiles it with the kernel's decorator on its first
    call (against a helper-mutant overlay where one is active) and calls the compiled code."""

    def __init__(self, decorator: Callable, func: Callable, registry: _Registry, cached: bool):
        functools.update_wrapper(self, func)  # the trampoline reads __name__ and __module__
        self._decorator, self._func, self._registry, self._cached = decorator, func, registry, cached
        self._compiled: dict[str | None, Any] = {}

    def __call__(self, *args, **kwargs):
        registry = self._registry
        active = get_mutant_under_test()
        if active == "stats":
            caller, _ = MutmutCallStack.get()
            for name in registry.helpers_reached(self._func):
                record_trampoline_hit(f"{registry.module}.x_{name}", caller=caller)
        helper = registry.helper_mutant(active)
        dispatcher = self._compiled.get(helper)
        if dispatcher is None:
            if helper is not None:
                dispatcher = _uncached(self._decorator, _rebind(self._func, registry.overlay(helper)))
            elif self._cached:
                dispatcher = self._decorator(self._func)
            else:
                dispatcher = _uncached(self._decorator, self._func)
            self._compiled[helper] = dispatcher
        return dispatcher(*args, **kwargs)


def kernel(decorator: Callable, func: Callable, module_globals: dict, helper: bool) -> Any:
    """The object the module binds to the kernel's name (see the module docstring)."""
    registry = _REGISTRIES.setdefault(module_globals["__name__"], _Registry(module_globals))
    mutants = module_globals.get(f"mutants_x_{func.__name__}__mutmut")
    if mutants is None:  # mutmut made no mutant of this kernel: it is left as it was
        return decorator(func)
    if helper:
        registry.helpers[func.__name__] = (decorator, mutants)
        return decorator(mutants["_mutmut_orig"])
    for key, variant in list(mutants.items()):
        # the original is cached on disk (workers load it); mutants are compiled by the one worker that tests them
        mutants[key] = _CompiledVariant(decorator, variant, registry, cached=key == "_mutmut_orig")
    return func
