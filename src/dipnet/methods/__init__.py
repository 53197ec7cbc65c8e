"""Training methods that plug into :mod:`dipnet.engine` (see :mod:`dipnet.engine.method`).

Importing this package registers every built-in component: each submodule registers its own
components with ``@register_component``, and all submodules are imported here.
"""
from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
