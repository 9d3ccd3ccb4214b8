"""The Rhai policy engine, embedded through PyO3 (private module).

Use :mod:`orchestrator_core.rhai.engine` instead of importing this module directly.

Values crossing into Rhai: ``None`` -> ``()``, ``bool``, ``int`` (64-bit signed), ``float``,
``str``, ``list``/``tuple`` -> array, ``dict`` with ``str`` keys -> object map, nested at most
``MAX_CONVERSION_DEPTH`` levels. Values crossing back: ``()`` -> ``None``, bool, int, float,
string/char -> ``str``, array -> ``list``, object map -> ``dict`` (keys sorted). Anything else
raises :class:`RhaiConversionError`.
"""

from collections.abc import Mapping
from typing import Any, Final, Protocol, final

__all__ = [
    "DEADLINE_CHECK_EVERY_OPS",
    "DEFAULT_LIMITS",
    "MAX_CALL_LEVELS_CEILING",
    "MAX_CONVERSION_DEPTH",
    "MAX_EXPR_DEPTH_CEILING",
    "MAX_METRIC_NAME_BYTES",
    "RHAI_VERSION",
    "CallResult",
    "CompiledScript",
    "RhaiCompileError",
    "RhaiConversionError",
    "RhaiError",
    "RhaiLimitExceeded",
    "RhaiRuntimeError",
    "RhaiTimeout",
]

RHAI_VERSION: Final[str]
"""Version of the embedded ``rhai`` crate."""
DEFAULT_LIMITS: Final[dict[str, int]]
"""The default value of every limit, by name."""
MAX_CONVERSION_DEPTH: Final[int]
"""Maximum nesting of lists/dicts crossing the boundary in either direction."""
MAX_CALL_LEVELS_CEILING: Final[int]
"""Largest accepted ``max_call_levels``."""
MAX_EXPR_DEPTH_CEILING: Final[int]
"""Largest accepted ``max_expr_depth`` and ``max_function_expr_depth``."""
DEADLINE_CHECK_EVERY_OPS: Final[int]
"""The wall-clock deadline is checked once every this many operations."""
MAX_METRIC_NAME_BYTES: Final[int]
"""Metric names are truncated to this many bytes."""

class _LimitsLike(Protocol):
    @property
    def max_operations(self) -> int: ...
    @property
    def max_call_levels(self) -> int: ...
    @property
    def max_expr_depth(self) -> int: ...
    @property
    def max_function_expr_depth(self) -> int: ...
    @property
    def max_string_size(self) -> int: ...
    @property
    def max_array_size(self) -> int: ...
    @property
    def max_map_size(self) -> int: ...
    @property
    def max_variables(self) -> int: ...
    @property
    def max_functions(self) -> int: ...
    @property
    def budget_ms(self) -> int: ...
    @property
    def max_log_lines(self) -> int: ...
    @property
    def max_log_line_bytes(self) -> int: ...
    @property
    def max_metrics(self) -> int: ...

@final
class CompiledScript:
    """A Rhai script compiled once on a sandboxed engine; callable many times, from any thread.

    ``prelude`` (Rhai source) is compiled on the same engine and merged with the script; a
    script function with the name and arity of a prelude function is refused
    (:class:`RhaiCompileError`, kind ``"prelude_collision"``). ``limits`` is ``None``
    (defaults), a dict of limit names to ints (unknown names refused) or an object with limit
    attributes such as ``RhaiLimits``. Top-level statements of the script never run.
    """

    def __new__(
        cls,
        source: str,
        *,
        prelude: str | None = None,
        limits: Mapping[str, int] | _LimitsLike | None = None,
        name: str = "policy",
    ) -> CompiledScript: ...
    @property
    def name(self) -> str:
        """The script name used in error messages."""
    @property
    def limits(self) -> dict[str, int]:
        """The effective limits."""
    def functions(self) -> list[tuple[str, int]]:
        """Functions defined by the script (not the prelude): sorted ``(name, arity)`` pairs."""
    def prelude_functions(self) -> list[tuple[str, int]]:
        """Functions defined by the prelude: sorted ``(name, arity)`` pairs."""
    def has_function(self, name: str, arity: int) -> bool:
        """Whether the script (not the prelude) defines ``name`` with ``arity`` parameters."""
    def call(
        self,
        fn_name: str,
        args: list[Any] | tuple[Any, ...] | None = None,
        *,
        budget_ms: int | None = None,
        this: object | None = None,
    ) -> CallResult:
        """Call script or prelude function ``fn_name`` with ``args``.

        ``budget_ms`` (default: the ``budget_ms`` limit) bounds the wall-clock time of the call;
        ``this``, when given, is bound as Rhai's ``this`` so method-style helpers reach it by
        reference. Arguments are converted with the GIL held; the engine runs without it.

        Raises :class:`RhaiConversionError`, :class:`RhaiRuntimeError`,
        :class:`RhaiLimitExceeded` or :class:`RhaiTimeout`.
        """

@final
class CallResult:
    """The outcome of one successful :meth:`CompiledScript.call`."""

    @property
    def value(self) -> Any:
        """The return value, converted to Python."""
    @property
    def logs(self) -> list[tuple[str, str]]:
        """``(level, message)`` pairs from ``print`` (info), ``debug`` (debug) and ``log_*``."""
    @property
    def metrics(self) -> list[tuple[str, float]]:
        """``(name, value)`` pairs from ``emit_metric``."""
    @property
    def operations(self) -> int:
        """Rhai operations counted for the call."""
    @property
    def elapsed_us(self) -> int:
        """Time spent inside the engine, in microseconds (conversions excluded)."""
    @property
    def dropped_logs(self) -> int:
        """Log lines dropped because ``max_log_lines`` was reached."""
    @property
    def dropped_metrics(self) -> int:
        """Metrics dropped because ``max_metrics`` was reached."""

class RhaiError(Exception):
    """Base class of every error of the Rhai engine binding."""

    kind: str
    """Stable name of the error kind, e.g. ``"syntax"``, ``"throw"``, ``"max_operations"``."""
    message: str
    """The message without position."""
    line: int | None
    """1-based line in ``source``, or ``None`` when unknown."""
    column: int | None
    """1-based column in ``source``, or ``None`` when unknown."""
    source: str | None
    """Where ``line``/``column`` point: the script name or ``"prelude"``."""
    traceback: list[str]
    """Frames ``"fn_name @ line:col"``, outermost first (prelude frames end in ``(prelude)``)."""
    logs: list[tuple[str, str]]
    """Log lines recorded before the error."""
    thrown: Any
    """The value of a Rhai ``throw`` (kind ``"throw"``), converted to Python; else ``None``."""

class RhaiCompileError(RhaiError):
    """The script or its prelude does not compile (syntax, parse-time limit, collision)."""

class RhaiRuntimeError(RhaiError):
    """The script failed while running (throw, type error, unknown name, ...)."""

class RhaiLimitExceeded(RhaiError):
    """The script exceeded a sandbox limit; ``kind`` names the limit."""

class RhaiTimeout(RhaiError):
    """The script exceeded the wall-clock budget of the call (kind ``"timeout"``)."""

class RhaiConversionError(RhaiError):
    """An argument or the return value cannot cross the Python/Rhai boundary."""
