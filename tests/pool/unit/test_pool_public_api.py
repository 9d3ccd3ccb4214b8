"""The public API of llorch_pool: complete, sorted, importable and documented."""

from __future__ import annotations

import importlib
import inspect

import llorch_pool.sim as sim
import pytest

MODULES = [
    "llorch_pool",
    "llorch_pool.agent",
    "llorch_pool.sim",
    "llorch_pool.protocol",
    "llorch_pool.errors",
    "llorch_pool.serving",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_importable_and_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__
    exported = list(module.__all__)
    assert exported == sorted(exported, key=lambda s: (not s.isupper(), s)) or exported == sorted(
        exported
    )
    for attr in exported:
        obj = getattr(module, attr)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, f"{name}.{attr} has no docstring"


def test_the_simulator_is_named_as_one() -> None:
    assert "simulator" in (sim.__doc__ or "").lower()
    assert "test" in (sim.SimulatedEngine.__module__ + (sim.__doc__ or ""))
