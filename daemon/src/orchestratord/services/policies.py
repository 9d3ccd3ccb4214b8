"""The active scheduling policy: its view, and building a new one from ``PUT /v2/scheduler``.

:func:`build_policy` validates an update (the same checks as the configuration file, plus
compiling a Rhai script or YAML rules) and returns the scheduler with the configuration it
implies; problems are INVALID_PARAMETER errors naming the field. The scheduling loop swaps
the result in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from orchestrator_core import ConfigInvalid, ErrorCode, OrchestratorConfig, RequestInvalid
from orchestrator_core.api import ApiModel
from orchestrator_core.errors import FieldError
from orchestrator_core.rhai.scheduler import PolicyCall
from orchestrator_core.rhai.tools import build_policy_scheduler, policy_registry
from orchestrator_core.scheduling.scheduler import Scheduler, SchedulerRegistry, build_scheduler
from pydantic import BaseModel, Field

__all__ = [
    "SchedulerUpdate",
    "SchedulerView",
    "build_policy",
    "default_registry",
    "read_policy_file",
]


class SchedulerUpdate(ApiModel):
    """``PUT /v2/scheduler``: the policy to activate (validated before it replaces the
    active one). ``script`` is Rhai source for ``policy = "rhai"``; ``rules`` is YAML for
    ``policy = "rules"``."""

    policy: Annotated[str, Field(min_length=1, max_length=64)]
    placement: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    script: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    rules: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None


class SchedulerView(BaseModel):
    """``GET /v2/scheduler``: the active policy and its counters."""

    policy: str
    placement: str
    since: float = Field(description="Unix time the policy became active")
    passes: int = 0
    errors: int = 0
    fallbacks: int = 0
    script: str | None = None
    rules: str | None = None
    version: int = Field(
        default=0,
        description="0: the configuration's policy; then one more per PUT (kept across "
        "restarts and leader changes: the applied policies are stored)",
    )
    applied_by: str | None = Field(
        default=None,
        description="Who applied it: the principal's kind and its token's fingerprint",
    )


def read_policy_file(path: str) -> str:
    """Policy files named by ``scheduler.script`` / ``scheduler.rules`` (``~`` expanded)."""
    return Path(path).expanduser().read_text(encoding="utf-8")


def _invalid(problems: list[str]) -> RequestInvalid:
    errors = []
    for problem in problems:
        name = problem.split(":", 1)[0].removeprefix("scheduler.")
        errors.append(
            FieldError(name, ErrorCode.INVALID_PARAMETER, problem.replace("scheduler.", ""))
        )
    return RequestInvalid(errors)


def default_registry(on_call: Callable[[PolicyCall], None]) -> SchedulerRegistry:
    """The built-in policies plus ``rhai`` and ``rules`` (files read with ``~`` expanded)."""
    return policy_registry(read_file=read_policy_file, on_call=on_call)


def build_policy(
    config: OrchestratorConfig,
    update: SchedulerUpdate,
    registry: SchedulerRegistry,
    on_call: Callable[[PolicyCall], None],
) -> tuple[Scheduler, OrchestratorConfig]:
    """The scheduler ``update`` asks for on top of ``config``, and the configuration with
    its ``[scheduler]`` section replaced. Raises :class:`RequestInvalid` naming the field."""
    section = config.scheduler.model_dump()
    section["policy"] = update.policy
    if update.placement is not None:
        section["placement"] = update.placement
    # The configuration names policy *files*; a PUT carries the source itself.
    section["script"] = "<request>" if update.script is not None else None
    section["rules"] = "<request>" if update.rules is not None else None
    data = config.to_toml_dict()
    data["scheduler"] = {k: v for k, v in section.items() if v is not None}
    try:
        new = OrchestratorConfig.from_mapping(data, env={})
        if new.scheduler.policy in ("rhai", "rules"):
            scheduler = build_policy_scheduler(
                new,
                text=update.script if new.scheduler.policy == "rhai" else update.rules,
                registry=registry,
                on_call=on_call,
            )
        else:
            scheduler = build_scheduler(new, registry)
    except ConfigInvalid as exc:
        raise _invalid(exc.problems) from None
    return scheduler, new
