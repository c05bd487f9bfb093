"""Resolve ``module:function`` specs given on the command line (user datasets and models)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import TimebudgetError


def import_callable(spec: str, flag: str) -> Callable[..., Any]:
    """Import ``module:function``; the module may live in the current directory or on ``PYTHONPATH``."""
    module_name, _, attr = spec.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TimebudgetError(f"{flag} {spec!r}: cannot import module {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TimebudgetError(f"{flag} {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn
