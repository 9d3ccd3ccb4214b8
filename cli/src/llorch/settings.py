"""Client settings (daemon URL, token, timeout) and where each value came from.

Precedence, lowest to highest: built-in default → the config file
(``$XDG_CONFIG_HOME/llorch/config.toml``, else ``~/.config/llorch/config.toml``, or ``--config``)
→ environment (``LLORCH_URL``, ``LLORCH_TOKEN``, ``LLORCH_TIMEOUT``) → flags (``--url``,
``--token``, ``--timeout``). Resolution is pure: the environment and the flags come in as
mappings, the file as text, so tests need no monkeypatching.

The config file is TOML with three optional keys::

    url = "http://gpu-box:8080"   # or several (HA): "http://a:8080,http://b:8080" or a list
    token = "…"            # sent as "Authorization: Bearer …"; shown only as a fingerprint
    timeout = 10.0         # seconds for connecting and for each non-streaming request
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator_core import ConfigInvalid
from orchestrator_core.config import read_toml

from llorch.errors import UsageProblem

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "ClientSettings",
    "Setting",
    "default_config_path",
    "resolve_settings",
    "token_fingerprint",
]

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where orchestratord listens by default (home mode, loopback)."""

DEFAULT_TIMEOUT_S = 10.0
"""Connect/request timeout in seconds (event streams wait for tokens without a read timeout)."""

_KEYS = {"url": "LLORCH_URL", "token": "LLORCH_TOKEN", "timeout": "LLORCH_TIMEOUT"}
_FLAGS = {"url": "--url", "token": "--token", "timeout": "--timeout"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One effective value and its source: ``default``, ``file PATH``, ``env NAME``, ``flag``."""

    value: Any
    source: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The effective client settings."""

    url: Setting
    token: Setting
    timeout: Setting
    config_file: Path
    config_file_found: bool

    @property
    def base_url(self) -> str:
        """The daemon's base URL(s), without trailing slashes (comma-separated when several)."""
        return str(self.url.value)

    @property
    def urls(self) -> list[str]:
        """Every configured orchestratord URL, in order (several with HA daemons)."""
        return self.base_url.split(",")

    @property
    def token_value(self) -> str | None:
        """The bearer token, or ``None``."""
        return None if self.token.value is None else str(self.token.value)

    @property
    def timeout_s(self) -> float:
        """Request timeout in seconds."""
        return float(self.timeout.value)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Plain data for ``llorch config show``; the token appears only as a fingerprint."""
        token = self.token_value
        return {
            "url": {"value": self.base_url, "source": self.url.source},
            "token": {
                "value": token_fingerprint(token) if token else None,
                "source": self.token.source,
            },
            "timeout": {"value": self.timeout_s, "source": self.timeout.source},
            "config_file": {
                "value": str(self.config_file),
                "source": "found" if self.config_file_found else "not found (optional)",
            },
        }


def token_fingerprint(token: str) -> str:
    """A short, non-reversible fingerprint of a token, safe to print."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def default_config_path(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/llorch/config.toml``, else ``~/.config/llorch/config.toml``."""
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "llorch" / "config.toml"


def _check_url(raw: Any, source: str) -> str:
    """One URL, or several (comma-separated, or a TOML list): normalised and joined by commas
    without spaces; duplicates dropped."""
    items = raw if isinstance(raw, list) and raw else [raw]
    urls: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UsageProblem(f"url ({source}): must be a non-empty string, got {raw!r}")
        for part in item.split(","):
            url = _check_one_url(part, raw, source)
            if url not in urls:
                urls.append(url)
    return ",".join(urls)


def _check_one_url(part: str, raw: Any, source: str) -> str:
    if not part.strip():
        raise UsageProblem(f"url ({source}): empty URL in {raw!r}")
    url = part.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageProblem(f"url ({source}): must look like http://host:port, got {raw!r}")
    try:
        parts.port  # noqa: B018  # raises ValueError on a bad port
    except ValueError:
        raise UsageProblem(f"url ({source}): bad port in {raw!r}") from None
    return url


def _check_token(raw: Any, source: str) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise UsageProblem(f"token ({source}): must be a string")
    token = raw.strip()
    if any(c.isspace() for c in token):
        raise UsageProblem(f"token ({source}): must not contain whitespace")
    return token or None


def _check_timeout(raw: Any, source: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        message = f"timeout ({source}): must be a number of seconds, got {raw!r}"
        raise UsageProblem(message) from None
    if isinstance(raw, bool) or not 0 < value <= 3600:
        raise UsageProblem(f"timeout ({source}): must be between 0 and 3600 seconds, got {raw!r}")
    return value


_CHECKS = {"url": _check_url, "token": _check_token, "timeout": _check_timeout}


def _read_file(path: Path, *, required: bool) -> dict[str, Any] | None:
    """The settings file's keys; ``None`` when an optional file is absent. A file that cannot
    be read or is malformed is reported as orchestrator_core reports any TOML file."""
    if not path.exists():
        if required:
            raise UsageProblem(f"{path}: config file not found")
        return None
    try:
        data = read_toml(path)
    except ConfigInvalid as exc:
        raise UsageProblem(exc.message) from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise UsageProblem(
            f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"(known: {', '.join(_KEYS)})"
        )
    return data


def resolve_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> ClientSettings:
    """Merge default, file, environment and flags (flags win) and validate each value.

    ``flags`` maps ``url``/``token``/``timeout`` to a value or ``None`` (flag not given).
    ``config_path`` is ``--config``: it must exist; the default path may be absent.
    Raises :class:`~llorch.errors.UsageProblem` naming the bad value and its source.
    """
    env = os.environ if env is None else env
    path = config_path or default_config_path(env)
    data = _read_file(path, required=config_path is not None)
    defaults: dict[str, Any] = {"url": DEFAULT_URL, "token": None, "timeout": DEFAULT_TIMEOUT_S}
    chosen: dict[str, Setting] = {}
    for key, env_name in _KEYS.items():
        setting = Setting(defaults[key], "default")
        if data is not None and key in data:
            setting = Setting(data[key], f"file {path}")
        if env.get(env_name):
            setting = Setting(env[env_name], f"env {env_name}")
        if flags.get(key) is not None:
            setting = Setting(flags[key], f"flag {_FLAGS[key]}")
        setting = Setting(_CHECKS[key](setting.value, setting.source), setting.source)
        chosen[key] = setting
    return ClientSettings(
        url=chosen["url"],
        token=chosen["token"],
        timeout=chosen["timeout"],
        config_file=path,
        config_file_found=data is not None,
    )
