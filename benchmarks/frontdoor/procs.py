"""The real processes of the front-door benchmark other than orchestratord: the fake engines,
a stand-in pool that registers them as OpenAI-protocol workers, and the peers (vllm-router,
the LiteLLM proxy) run from their own virtual environment, ``benchmarks/.venv-peers``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from orchestratord.testing.processes import HeartbeatingPool, free_port, stop_child, wait_until

__all__ = [
    "PEERS_REQUIREMENTS",
    "PEERS_VENV",
    "FakeEngineProcess",
    "OpenAIPool",
    "PeerProcess",
    "install_peers",
    "litellm",
    "peer_binary",
    "vllm_router",
]

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE.parent / ".venv-peers"
PEERS_REQUIREMENTS = HERE.parent / "requirements-peers.txt"
MODEL = "fake-model"


class FakeEngineProcess:
    """One FAKE OpenAI engine (``frontdoor/fake_engine.py``) in its own process. Looks like an
    :class:`~orchestratord.testing.processes.EngineProcess` to :class:`HeartbeatingPool`."""

    def __init__(self, worker_id: str, model: str = MODEL) -> None:
        self.worker_id, self.model = worker_id, model
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.port = 0

    def start(self, timeout_s: float = 20.0) -> FakeEngineProcess:
        """Start and read the URL it prints."""
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fake_engine.py"), "--port", "0", "--model", self.model],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        out = self.proc.stdout
        assert out is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(out.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not line or not line[0].startswith("http"):
            self.stop()
            raise RuntimeError("the fake engine did not print its URL")
        self.url = line[0].strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        """Is the process running?"""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        stop_child(self.proc, grace_s=5.0)


@dataclass
class OpenAIPool(HeartbeatingPool):
    """:class:`HeartbeatingPool` whose workers speak ``"openai"`` (``/v1/completions``) and
    take ``max_concurrency`` jobs at once (the stand-in reports neither)."""

    max_concurrency: int = 64

    def workers(self) -> list[dict[str, Any]]:
        """Worker entries of the alive engines, as OpenAI-protocol workers."""
        return [
            {**w, "protocol": "openai", "max_concurrency": self.max_concurrency}
            for w in super().workers()
        ]


def peer_binary(name: str) -> Path | None:
    """``benchmarks/.venv-peers/bin/<name>`` when it is installed."""
    path = PEERS_VENV / "bin" / name
    return path if path.exists() else None


def install_peers() -> None:
    """Create ``benchmarks/.venv-peers`` (when missing) and install the pinned peers into it."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEERS_VENV} ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(PEERS_VENV)])
    print(f"installing {PEERS_REQUIREMENTS.name} into {PEERS_VENV} ...", flush=True)
    subprocess.check_call(
        [str(python), "-m", "pip", "install", "-q", "-r", str(PEERS_REQUIREMENTS)]
    )


class PeerProcess:
    """A peer front door as a child process (own session, log file), ready when
    ``GET ready_path`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        log_path: Path,
        *,
        ready_path: str = "/health",
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.ready_path, self.env, self.ready_timeout_s = ready_path, env, ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Its process id."""
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> PeerProcess:
        logf = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            env={**os.environ, **(self.env or {})},
        )
        logf.close()
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited: {tail}")
            return httpx.get(url, timeout=2.0).status_code == 200

        try:
            wait_until(ready, self.ready_timeout_s, f"{self.name} {self.ready_path}", 0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group."""
        stop_child(self.proc, grace_s=10.0)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def vllm_router(engines: list[FakeEngineProcess], workdir: Path) -> PeerProcess | None:
    """vllm-router (round robin) in front of ``engines``; None when not installed."""
    binary = peer_binary("vllm-router")
    if binary is None:
        return None
    port = free_port()
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]
    argv += ["--log-level", "warning", "--worker-urls", *(e.url for e in engines)]
    return PeerProcess("vllm-router", argv, port, workdir / "vllm-router.log")


LITELLM_KEY = "sk-frontdoor-bench"


def litellm(engines: list[FakeEngineProcess], workdir: Path) -> PeerProcess | None:
    """The LiteLLM proxy (one uvicorn worker, master key :data:`LITELLM_KEY`, no database)
    with ``engines`` as the deployments of one model; None when not installed."""
    binary = peer_binary("litellm")
    if binary is None:
        return None
    deployments = "".join(
        f"  - model_name: {MODEL}\n"
        f"    litellm_params:\n"
        f"      model: text-completion-openai/{e.model}\n"
        f"      api_base: {e.url}/v1\n"
        f"      api_key: fake-key\n"
        for e in engines
    )
    config = workdir / "litellm.yaml"
    config.write_text(
        f"model_list:\n{deployments}"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
        f"general_settings:\n  master_key: {LITELLM_KEY}\n",
        encoding="utf-8",
    )
    port = free_port()
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1"]
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    return PeerProcess(
        "litellm", argv, port, workdir / "litellm.log", ready_path="/health/liveliness", env=env
    )
