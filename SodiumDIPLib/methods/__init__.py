"""Method registry: every module in this package registers its methods when imported.

Use ``get_method(name)`` and ``list_methods()``; adding a method is adding a module here that calls
``register(Method(...))``.
"""

import importlib
import pkgutil

from SodiumDIPLib.methods.base import Method, MethodResult, Problem, RunContext, get_method, list_methods, register

_loaded = False


def _load_all():
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


__all__ = ["Method", "MethodResult", "Problem", "RunContext", "get_method", "list_methods", "register"]
