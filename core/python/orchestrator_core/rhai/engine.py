"""The embedded Rhai engine: sandbox limits, compiling and calling policy scripts.

A thin, typed layer over the Rust extension :mod:`orchestrator_core._rhai`::

    script = compile_script(source, prelude=PRELUDE, limits=RhaiLimits(budget_ms=20))
    result = script.call("schedule", this=ctx)  # ctx bound as `this`, reached by reference
    result.value, result.logs, result.metrics, result.operations, result.elapsed_us

Passing a large ctx: bind it as ``this`` rather than passing it as an argument. Rhai walks and
frees every argument inside the call (about 20 ms for a 1e4-job ctx, see
``benchmarks/bench_rhai_binding.py``) and copies arrays and maps passed to script helpers
written ``helper(ctx)``; helpers written method-style (``ctx.helper()`` or ``this.helper()``)
reach the same value by reference.

Size limits count nested totals (all strings, array elements and map entries inside one
value), and Rhai checks the whole object of every native method call: ``ctx.queue.len()``
walks the queue. The defaults let a 1e4-job ctx through with room to spare; each such call
costs time proportional to the object (a few ms for 1e4 jobs). Rhai 1.27 does not size-check
``map[new_key] = value``: such growth is bounded by ``max_operations`` (about one entry per
six operations) until the next method call on the map checks it.

Errors: every exception derives from :class:`RhaiError` and carries ``kind`` (stable string),
``message``, ``line``, ``column``, ``source``, ``traceback``, ``logs`` and ``thrown``. Limit and
timeout errors cannot be caught by a script's ``try``/``catch``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from orchestrator_core._rhai import (
    RHAI_VERSION,
    CallResult,
    CompiledScript,
    RhaiCompileError,
    RhaiConversionError,
    RhaiError,
    RhaiLimitExceeded,
    RhaiRuntimeError,
    RhaiTimeout,
)

__all__ = [
    "DEFAULT_RHAI_LIMITS",
    "RHAI_VERSION",
    "CallResult",
    "CompiledScript",
    "RhaiCompileError",
    "RhaiConversionError",
    "RhaiError",
    "RhaiLimitExceeded",
    "RhaiLimits",
    "RhaiRuntimeError",
    "RhaiTimeout",
    "compile_script",
]


@dataclass(frozen=True, slots=True)
class RhaiLimits:
    """Sandbox limits of one compiled script. Every one is set explicitly on the engine.

    A limit error (:class:`RhaiLimitExceeded`, ``kind`` = the field name) or a timeout
    (:class:`RhaiTimeout`) ends the call; the same script can be called again at once.
    """

    max_operations: int = 1_000_000
    """Rhai operations per call (each expression, statement and call counts one)."""
    max_call_levels: int = 32
    """Nested script function calls. The engine runs on its own 256 MiB stack segment, so
    deep recursion ends with ``kind="max_call_levels"``, never a native stack overflow.
    At most ``MAX_CALL_LEVELS_CEILING`` (256)."""
    max_expr_depth: int = 64
    """Expression nesting at the top level of the script. Checked when compiling: a deeper
    expression is a :class:`RhaiCompileError` with ``kind="expr_too_deep"``."""
    max_function_expr_depth: int = 32
    """Expression nesting inside function bodies (compile time, as above)."""
    max_string_size: int = 8 * 1024 * 1024
    """Bytes of one string, and of all strings inside one array or map (nested total).
    A 1e4-job queue holds ~1.6 MB of strings."""
    max_array_size: int = 100_000
    """Elements of one array, nested arrays included (a 1e4-job queue counts 1e4)."""
    max_map_size: int = 1_000_000
    """Entries of one object map, nested maps included (a 1e4-job queue counts ~150k)."""
    max_variables: int = 1_000
    """Variables alive at once, over all active call frames."""
    max_functions: int = 1_000
    """Functions (and closures) defined by the script, and by the prelude (compile time)."""
    budget_ms: int = 50
    """Default wall-clock budget of one call, in milliseconds (``call(budget_ms=...)``
    overrides it). Checked at every operation against a coarse clock (1-4 ms resolution
    on Linux); one long native operation (copying a huge value) cannot be interrupted.
    At most 600000."""
    max_log_lines: int = 100
    """Log lines kept per call (print, debug, log_*); later lines are counted as dropped."""
    max_log_line_bytes: int = 1_024
    """Bytes kept of each log line (cut on a character boundary)."""
    max_metrics: int = 100
    """``emit_metric`` records kept per call; later ones are counted as dropped."""

    def as_dict(self) -> dict[str, int]:
        """The limits by name, as the extension takes them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


DEFAULT_RHAI_LIMITS: Final[RhaiLimits] = RhaiLimits()
"""The default limits (equal to the extension's ``DEFAULT_LIMITS``)."""


def compile_script(
    source: str,
    *,
    prelude: str | None = None,
    limits: RhaiLimits | Mapping[str, int] = DEFAULT_RHAI_LIMITS,
    name: str = "policy",
) -> CompiledScript:
    """Compile ``source`` (and ``prelude``, Rhai helper functions) on a sandboxed engine.

    ``name`` names the script in error messages. Raises :class:`RhaiCompileError` with the
    line and column of a syntax error, or of a script function that collides with a prelude
    function (same name and arity); ``ValueError``/``TypeError`` for invalid limits.
    """
    as_dict = limits.as_dict() if isinstance(limits, RhaiLimits) else dict(limits)
    return CompiledScript(source, prelude=prelude, limits=as_dict, name=name)
