"""The helper prelude compiled with every policy (package data ``prelude.rhai``).

The helpers are Rhai functions; those that read the cluster are methods on ``ctx``
(``ctx.find_least_loaded_worker(model)``), the others plain functions (``min(array)``).
docs/policies.md lists them; :func:`prelude_helpers` gives the public ones with their arity.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Final

from orchestrator_core.rhai.engine import compile_script

__all__ = ["PRELUDE_SOURCE", "prelude_helpers"]

PRELUDE_SOURCE: Final[str] = (
    resources.files("orchestrator_core.rhai").joinpath("prelude.rhai").read_text(encoding="utf-8")
)
"""Rhai source of the prelude."""


@functools.cache
def prelude_helpers() -> tuple[tuple[str, int], ...]:
    """Public prelude functions as sorted ``(name, arity)`` pairs (internal ``__`` names
    left out); a policy may not define a function with one of these names and arities."""
    script = compile_script("", prelude=PRELUDE_SOURCE, name="prelude-check")
    return tuple(f for f in script.prelude_functions() if not f[0].startswith("__"))
