"""Fine-tuning methods (``--method``): one file per method, each registering itself.

- ``base``: the :class:`Method` contract, the registry (:func:`register_method`, :func:`get_method`)
  and :func:`apply_method`.
- ``full``: every parameter trains.
- ``probe``: ``fc-train``, a linear probe.
- ``bitfit``: BitFit (Ben Zaken et al. 2022).
- ``lora``: LoRA (Hu et al. 2022) through PEFT.
- ``svd``: the SVD family (SVF, Sun et al. 2022, and the restated paper's variants).
- ``dora``: DoRA (Liu et al. 2024) through PEFT's ``use_dora``.
- ``ssf``: SSF (Lian et al. 2022), a learned per-channel scale and shift after each conv, folded into it.

Every module in this folder is imported when the package is, so a new method is one new file
here; the contract tests (``tests/methods/test_contract.py``) run it through apply, merge, adapters and
export.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    PROTOCOL,
    Method,
    apply_method,
    get_method,
    method_fields,
    method_names,
    protocol_defaults,
    register_method,
)

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "PROTOCOL",
    "Method",
    "apply_method",
    "get_method",
    "method_fields",
    "method_names",
    "protocol_defaults",
    "register_method",
]
