"""The library's public API is exactly ``__all__``: sorted, importable, documented."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import orchestrator_core


def public_modules() -> list[str]:
    names = ["orchestrator_core"]
    for info in pkgutil.walk_packages(orchestrator_core.__path__, "orchestrator_core."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = orchestrator_core.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(orchestrator_core, name), name


def test_every_public_module_name_and_method_has_a_docstring() -> None:
    missing: list[str] = []
    for mod_name in public_modules():
        module = importlib.import_module(mod_name)
        if not (module.__doc__ or "").strip():
            missing.append(mod_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not (inspect.getdoc(obj) or "").strip():
                missing.append(f"{mod_name}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not inspect.isfunction(member):
                        continue
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{mod_name}.{name}.{attr}")
    assert missing == []
