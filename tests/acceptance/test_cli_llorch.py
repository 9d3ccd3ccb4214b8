"""Acceptance: the real `llorch` program against a real `orchestratord` process with a simulated
pool (`llorch-sim pool`, the clearly-named test tool), all over real HTTP on free ports.

Covers issue 7's "done means": submit streams tokens as they arrive, detach + watch resumes
where it left off, cancel works (by command and by Ctrl-C), bad input is refused locally with
the daemon's own code and message, and an unknown job exits 4.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from llorch.exitcodes import ExitCode

pytestmark = pytest.mark.timeout(180)

MODEL = "sim-model"
TOKENS_PER_S = 40.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


class Proc:
    """A child process whose stdout lines are read by a thread (so reads can time out)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self._log = log.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log_path = log
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout:  # closed at EOF: an open pipe is a ResourceWarning
            for line in self.popen.stdout:
                self.lines.put(line)
        self.lines.put(None)

    def readline(self, timeout: float = 30.0) -> str | None:
        """The next stdout line, ``None`` at EOF; fails the test after ``timeout``."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no output within {timeout}s from {self.popen.args}")

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._pump_thread.join(timeout=10)
        self._log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """orchestratord + one simulated pool; yields the environment llorch runs with."""
    tmp = tmp_path_factory.mktemp("llorch-acceptance")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LLORCH_", "ORCHESTRATORD_", "NO_COLOR"))
    }
    procs: list[Proc] = []
    try:
        daemon = Proc(
            [_bin("orchestratord"), "--port", str(port), "--data-dir", str(tmp / "data")],
            base_env,
            tmp / "orchestratord.log",
        )
        procs.append(daemon)
        _wait_for(lambda: _get(f"{url}/ready") == 200, 30, "orchestratord ready", daemon)
        pool = Proc(
            [
                _bin("llorch-sim"), "pool", "--orchestrator", url, "--pool-id", "sim-acc",
                "--gpus", "1", "--vram-gb", "24", "--models", f"{MODEL}:6",
                "--tokens-per-s", str(TOKENS_PER_S), "--ttft-ms", "20",
                "--heartbeat-interval", "1",
            ],
            base_env,
            tmp / "llorch-sim.log",
        )  # fmt: skip
        procs.append(pool)
        env = {**base_env, "LLORCH_URL": url, "XDG_CONFIG_HOME": str(tmp / "xdg")}

        def pool_online() -> bool:
            result = llorch(env, "pools", "list", "--json")
            if result.returncode != 0:
                return False
            pools = json.loads(result.stdout)["pools"]
            return any(p["pool_id"] == "sim-acc" and p["status"] == "online" for p in pools)

        _wait_for(pool_online, 30, "the simulated pool online", pool)
        yield env
    finally:
        for proc in reversed(procs):
            proc.stop()


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _wait_for(check, seconds: float, what: str, proc: Proc | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"{what}: process exited {proc.popen.returncode}: {proc.stderr()[-2000:]}")
        time.sleep(0.1)
    tail = proc.stderr()[-2000:] if proc else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def llorch(
    env: dict[str, str], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run the real llorch program to completion."""
    return subprocess.run(
        [sys.executable, "-m", "llorch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def llorch_bg(env: dict[str, str], tmp: Path, *args: str) -> Proc:
    """Start the real llorch program, reading its stdout as it comes."""
    return Proc([sys.executable, "-m", "llorch", *args], env, tmp / f"llorch-{time.time_ns()}.log")


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _status(env: dict[str, str], job_id: str) -> dict:
    result = llorch(env, "jobs", "status", job_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _wait_status(env: dict[str, str], job_id: str, wanted: set[str], seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = _status(env, job_id)
        if status["status"] in wanted:
            return status
        time.sleep(0.2)
    pytest.fail(f"job {job_id} never reached {wanted}; last {status}")


# -- submit -----------------------------------------------------------------------------------


def test_submit_streams_tokens_as_they_arrive(cluster, tmp_path):
    proc = llorch_bg(cluster, tmp_path, "jobs", "submit", "-m", MODEL, "-p", "Tell me a story",
                     "-n", "120", "--json")  # fmt: skip
    try:
        first = json.loads(proc.readline() or "null")
        assert first["event"] == "submitted"
        job_id = first["data"]["job_id"]
        events = [first]
        while True:
            line = proc.readline()
            assert line is not None, f"stream ended early: {proc.stderr()}"
            events.append(json.loads(line))
            if events[-1]["event"] == "token":
                break
        # 120 tokens at 40 tok/s take three seconds: the first token is already here,
        # while llorch is still running — tokens are streamed, not printed at the end.
        assert proc.popen.poll() is None, "llorch had already finished: nothing was streamed"
        while (line := proc.readline()) is not None:
            events.append(json.loads(line))
        assert proc.popen.wait(timeout=30) == ExitCode.OK, proc.stderr()
    finally:
        proc.stop()
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["submitted", "queued", "started"]
    assert kinds[-1] == "end"
    tokens = [e for e in events if e["event"] == "token"]
    assert 1 <= len(tokens) <= 120
    ids = [int(e["id"]) for e in events[1:]]
    assert ids == list(range(1, len(ids) + 1)), "event ids increase without gaps"
    status = _status(cluster, job_id)
    assert status["status"] == "completed"
    assert status["tokens_generated"] == len(tokens)


def test_submit_prints_plain_text_to_stdout_and_status_to_stderr(cluster):
    result = llorch(cluster, "jobs", "submit", "-m", MODEL, "-p", "hi", "-n", "8")
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout.strip(), "generated text on stdout"
    assert "llorch: job" in result.stderr
    assert "completed" in result.stderr
    assert "llorch:" not in result.stdout


# -- detach + watch ---------------------------------------------------------------------------


def test_detach_then_watch_resumes_where_it_left_off(cluster, tmp_path):
    submitted = llorch(cluster, "jobs", "submit", "-m", MODEL, "-p", "hi", "-n", "400", "-d")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id

    # Watch until a few tokens came, then stop watching with Ctrl-C: the job keeps running.
    watcher = llorch_bg(cluster, tmp_path, "jobs", "watch", job_id, "--json")
    seen: list[dict] = []
    try:
        while sum(e["event"] == "token" for e in seen) < 3:
            line = watcher.readline()
            assert line is not None, watcher.stderr()
            seen.append(json.loads(line))
        watcher.popen.send_signal(signal.SIGINT)
        assert watcher.popen.wait(timeout=30) == ExitCode.INTERRUPTED
        while (line := watcher.readline(timeout=5)) is not None:
            event = json.loads(line)
            if event["event"] != "detached":
                seen.append(event)
    finally:
        watcher.stop()
    last_id = seen[-1]["id"]
    assert f"llorch jobs watch {job_id} --since {last_id}" in watcher.stderr()
    assert _status(cluster, job_id)["status"] in {"running", "completed"}, "not cancelled"

    # Reattach from that point: exactly the missing events, then the terminal one.
    resumed = llorch(cluster, "jobs", "watch", job_id, "--since", last_id, "--json")
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    rest = _events(resumed.stdout)
    ids = [int(e["id"]) for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1)), "nothing lost, nothing repeated"
    assert rest[-1]["event"] == "end"

    # A finished job replays everything; the text equals the two halves put together.
    replay = llorch(cluster, "jobs", "watch", job_id)
    assert replay.returncode == ExitCode.OK
    text = "".join(e["data"]["t"] for e in seen + rest if e["event"] == "token")
    assert replay.stdout == text


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_command_cancels_a_running_job(cluster):
    submitted = llorch(cluster, "jobs", "submit", "-m", MODEL, "-p", "long", "-n", "2000", "-d")
    job_id = submitted.stdout.strip()
    _wait_status(cluster, job_id, {"running"})
    result = llorch(cluster, "jobs", "cancel", job_id)
    assert result.returncode == ExitCode.OK, result.stderr
    assert job_id in result.stdout
    final = _wait_status(cluster, job_id, {"cancelled"})
    assert final["status"] == "cancelled"
    watched = llorch(cluster, "jobs", "watch", job_id)
    assert watched.returncode == ExitCode.JOB_FAILED
    assert "cancelled" in watched.stderr
    again = llorch(cluster, "jobs", "cancel", job_id, "--json")
    assert again.returncode == ExitCode.OK, "cancel is idempotent"
    assert json.loads(again.stdout)["results"][0]["status"] == "cancelled"


def test_ctrl_c_during_submit_cancels_the_job(cluster, tmp_path):
    proc = llorch_bg(cluster, tmp_path, "jobs", "submit", "-m", MODEL, "-p", "long", "-n",
                     "2000", "--json")  # fmt: skip
    try:
        job_id = None
        while True:
            line = proc.readline()
            assert line is not None, proc.stderr()
            event = json.loads(line)
            if event["event"] == "submitted":
                job_id = event["data"]["job_id"]
            if event["event"] == "token":
                break
        proc.popen.send_signal(signal.SIGINT)
        assert proc.popen.wait(timeout=30) == ExitCode.INTERRUPTED
    finally:
        proc.stop()
    assert f"interrupted: cancelled job {job_id}" in proc.stderr()
    assert job_id is not None
    assert _wait_status(cluster, job_id, {"cancelled"})["status"] == "cancelled"


# -- errors against the real daemon -----------------------------------------------------------


def test_bad_input_is_refused_locally_with_the_daemons_code_and_message(cluster):
    local = llorch(cluster, "--json", "jobs", "submit", "-m", MODEL, "-p", "x", "--top-p", "3")
    assert local.returncode == ExitCode.USAGE
    mine = json.loads(local.stdout)["error"]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100, "top_p": 3.0}
    theirs = httpx.post(f"{cluster['LLORCH_URL']}/v2/tasks", json=body, timeout=10).json()["error"]
    assert (mine["code"], mine["message"]) == (theirs["code"], theirs["message"])


def test_unknown_job_and_list_against_the_real_daemon(cluster):
    missing = llorch(cluster, "jobs", "status", "job-does-not-exist")
    assert missing.returncode == ExitCode.NOT_FOUND
    assert "JOB_NOT_FOUND" in missing.stderr
    listed = llorch(cluster, "jobs", "list", "--limit", "2", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert len(page["jobs"]) <= 2
    shown = llorch(cluster, "pools", "show", "sim-acc", "--json")
    assert json.loads(shown.stdout)["pool_id"] == "sim-acc"
    assert llorch(cluster, "scheduler", "show", "--json").returncode == 0


def test_scheduler_apply_of_a_broken_policy_is_refused_and_the_active_one_stays(cluster, tmp_path):
    before = json.loads(llorch(cluster, "scheduler", "show", "--json").stdout)
    policy = tmp_path / "broken.rhai"
    policy.write_text("fn schedule(ctx) {\n    let x = ;\n}\n", encoding="utf-8")
    result = llorch(cluster, "scheduler", "apply", str(policy))
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "INVALID" in result.stderr
    after = json.loads(llorch(cluster, "scheduler", "show", "--json").stdout)
    assert (after["policy"], after["since"]) == (before["policy"], before["since"])
