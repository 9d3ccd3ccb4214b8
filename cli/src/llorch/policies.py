"""Offline policy tools: a thin adapter over ``orchestrator_core.rhai``.

``llorch scheduler validate`` and ``dry-run`` run the policy through the library, without a
daemon. When this build of orchestrator_core has no policy tools, both report that clearly
(:class:`~llorch.errors.FeatureUnavailable`, exit code 8) instead of pretending.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from llorch.errors import FeatureUnavailable, UsageProblem

__all__ = ["PolicyReport", "dry_run", "policy_kind", "read_policy", "validate"]

PolicyReport = dict[str, Any]
"""Plain-data result of a validation or dry-run (printed as-is with ``--json``)."""


def _tools() -> ModuleType:
    """``orchestrator_core.rhai`` if this build has its policy tools, else a clear error."""
    try:
        module = importlib.import_module("orchestrator_core.rhai")
    except ImportError:
        module = None
    if module is None or not all(hasattr(module, f) for f in ("validate_policy", "dry_run")):
        raise FeatureUnavailable(
            "the offline policy tools (orchestrator_core.rhai) are not available in this "
            "build; `llorch scheduler apply FILE` still has the daemon validate the policy"
        )
    return module


def policy_kind(path: Path) -> str:
    """``rhai`` for a ``.rhai`` script, ``rules`` for a ``.yaml``/``.yml`` rule file."""
    suffix = path.suffix.lower()
    if suffix == ".rhai":
        return "rhai"
    if suffix in (".yaml", ".yml"):
        return "rules"
    raise UsageProblem(f"{path}: expected a .rhai script or a .yaml/.yml rule file")


def read_policy(path: Path) -> str:
    """The policy file's text, or a usage error naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageProblem(f"{path}: cannot read policy: {reason}") from None


def validate(path: Path) -> PolicyReport:
    """Check a policy offline (compile, ``fn schedule(ctx)``, one run on the library's sample
    snapshot): ``{"valid", "kind", "problems" (with line:column), "warnings", …}``."""
    tools = _tools()
    kind = policy_kind(path)
    text = read_policy(path)
    report = tools.validate_policy(text, name=str(path), kind=kind)
    return dict(report.to_dict())


def dry_run(path: Path, snapshot: Any, *, snapshot_name: str = "snapshot") -> PolicyReport:
    """Run a policy offline on a saved snapshot: ``{"valid", "decision", "logs",
    "fallback", "builtin_decision", …}``. A malformed snapshot is a usage error listing
    every bad field."""
    tools = _tools()
    kind = policy_kind(path)
    text = read_policy(path)
    try:
        result = tools.dry_run(text, snapshot, name=str(path), kind=kind)
    except tools.SnapshotInvalid as exc:
        raise UsageProblem(
            f"--snapshot {snapshot_name}: {exc.message}", details={"problems": exc.problems}
        ) from None
    return dict(result.to_dict())
