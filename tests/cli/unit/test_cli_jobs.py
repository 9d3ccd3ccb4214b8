"""`llorch jobs …` through typer's CliRunner, with tests.support.llorch_fake.FakeOrchestratord
standing in for the daemon's HTTP (an httpx.MockTransport: the unit-test seam)."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from llorch.exitcodes import ExitCode
from llorch.output import Output

from tests.support.llorch_fake import FakeOrchestratord, invoke


@pytest.fixture
def fake() -> FakeOrchestratord:
    return FakeOrchestratord(tokens=["The", " sky", " is", " blue", "."])


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _posts(fake: FakeOrchestratord) -> list:
    return [r for r in fake.requests if r.method == "POST"]


# -- submit -----------------------------------------------------------------------------------


def test_submit_streams_tokens_to_stdout_and_status_to_stderr(fake):
    result = invoke(fake, "jobs", "submit", "--model", "llama-3-8b", "--prompt", "Why?")
    assert result.exit_code == ExitCode.OK
    assert result.stdout == "The sky is blue."
    assert "queued" in result.stderr
    assert "started on pool-a/pool-a-w1" in result.stderr
    assert "completed: 5 tokens" in result.stderr
    body = json.loads(_posts(fake)[0].content)
    assert body == {"model": "llama-3-8b", "prompt": "Why?", "max_tokens": 100}


def test_submit_sends_every_sampling_parameter(fake):
    args = [
        "jobs", "submit", "-m", "m", "-p", "hi", "-n", "7", "--temperature", "0.2",
        "--top-p", "0.9", "--top-k", "40", "--repetition-penalty", "1.1", "--stop", "\n",
        "--stop", "END", "--seed", "42", "--priority", "batch", "--session", "s-1",
        "--job-timeout", "30",
    ]  # fmt: skip
    result = invoke(fake, *args)
    assert result.exit_code == 0, result.stderr
    body = json.loads(_posts(fake)[0].content)
    assert body == {
        "model": "m",
        "prompt": "hi",
        "max_tokens": 7,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n", "END"],
        "seed": 42,
        "priority": "batch",
        "session_id": "s-1",
        "timeout_s": 30.0,
    }


def test_submit_reads_the_prompt_from_stdin_and_from_a_file(fake, tmp_path):
    result = invoke(fake, "jobs", "submit", "-m", "m", "--prompt", "-", stdin="from stdin\n")
    assert result.exit_code == 0
    assert json.loads(_posts(fake)[0].content)["prompt"] == "from stdin\n"
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from a file", encoding="utf-8")
    result = invoke(fake, "jobs", "submit", "-m", "m", "--prompt-file", str(prompt))
    assert result.exit_code == 0
    assert json.loads(_posts(fake)[1].content)["prompt"] == "from a file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no prompt"),
        (("-p", "a", "-f", "b.txt"), "not both"),
        (("-f", "/nonexistent/prompt.txt"), "cannot read"),
    ],
)
def test_submit_prompt_usage_errors_exit_2_and_send_nothing(fake, args, message):
    result = invoke(fake, "jobs", "submit", "-m", "m", *args)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert fake.requests == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--temperature", "5"), "INVALID_PARAMETER", "temperature: must be between 0.0 and 2.0"),
        (("--priority", "urgent"), "INVALID_PARAMETER", "priority: must be one of"),
        (("-n", "0"), "INVALID_PARAMETER", "max_tokens: must be between 1 and"),
        (("--top-p", "1.5"), "INVALID_PARAMETER", "top_p: must be between 0.0 and 1.0"),
        (("--session", "bad session!"), "INVALID_PARAMETER", "session_id: must match"),
        (
            ("--stop", "a", "--stop", "b", "--stop", "c", "--stop", "d", "--stop", "e"),
            "INVALID_PARAMETER",
            "stop: at most 4 stop strings",
        ),
    ],
)
def test_bad_input_gives_the_servers_code_and_message_and_sends_nothing(fake, args, code, message):
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", *args)
    assert result.exit_code == ExitCode.USAGE
    assert f"{code}: {message}" in result.stderr
    assert fake.requests == [], "nothing may be sent for invalid input"


def test_local_validation_matches_the_daemons_answer(fake):
    """The same request, validated by the fake daemon with orchestrator_core, gives the same
    code and message as llorch's local check."""
    local = invoke(fake, "--json", "jobs", "submit", "-m", "m", "-p", "hi", "--temperature", "9")
    server = fake.handle(
        __import__("httpx").Request(
            "POST", "http://x/v2/tasks", json={"model": "m", "prompt": "hi", "max_tokens": 100,
                                               "temperature": 9.0},
        )
    )  # fmt: skip
    local_error = json.loads(local.stdout)["error"]
    server_error = server.json()["error"]
    assert local_error["code"] == server_error["code"] == "INVALID_PARAMETER"
    assert local_error["message"] == server_error["message"]
    assert local_error["exit_code"] == ExitCode.USAGE


def test_submit_json_prints_one_parseable_object_per_event(fake):
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "--json")
    assert result.exit_code == 0
    lines = _json_lines(result.stdout)
    assert [line["event"] for line in lines] == [
        "submitted", "queued", "started", "token", "token", "token", "token", "token",
        "metrics", "end",
    ]  # fmt: skip
    assert lines[0]["data"]["job_id"] == "job-0001"
    assert "".join(e["data"]["t"] for e in lines if e["event"] == "token") == "The sky is blue."
    assert result.stderr == ""


def test_detach_prints_the_job_id_at_once(fake):
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "--detach")
    assert result.exit_code == 0
    assert result.stdout == "job-0001\n"
    assert [r.url.path for r in fake.requests] == ["/v2/tasks"], "no stream opened"
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d", "--json")
    reply = json.loads(result.stdout)
    assert reply["job_id"] == "job-0002"
    assert reply["status"] == "queued"
    assert reply["events_url"] == "/v2/tasks/job-0002/events"


def test_a_failed_job_exits_1_with_its_error(fake):
    fake.fail_with = ("WORKER_FAILED", "worker died mid-job")
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.JOB_FAILED
    assert "The sky is blue." in result.stdout
    assert "failed: WORKER_FAILED: worker died mid-job" in result.stderr


def test_ctrl_c_while_streaming_cancels_the_job_and_says_so(fake):
    fake.interrupt_after = 4  # queued, started, 2 tokens, then Ctrl-C
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.stdout == "The sky"
    assert "interrupted: cancelled job job-0001" in result.stderr
    assert [(r.method, r.url.path) for r in fake.requests][-1] == ("DELETE", "/v2/tasks/job-0001")
    assert fake.jobs["job-0001"].status["status"] == "cancelled"


def test_a_dropped_stream_reconnects_with_last_event_id_and_loses_nothing(fake):
    fake.drop_after = 3  # queued, started, first token, then the connection resets
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "The sky is blue.", "no token lost or repeated"
    streams = [r for r in fake.requests if r.url.path.endswith("/events")]
    assert len(streams) == 2
    assert "Last-Event-ID" not in streams[0].headers
    assert streams[1].headers["Last-Event-ID"] == "3"


def test_events_replayed_by_the_daemon_are_not_printed_twice(fake):
    """A daemon that ignores Last-Event-ID and replays everything must not duplicate text."""
    fake.drop_after = 4
    original = fake._events

    def replay_all(job_id, request):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "last-event-id"}
        stripped = __import__("httpx").Request("GET", request.url, headers=headers)
        return original(job_id, stripped)

    fake._events = replay_all
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == 0
    assert result.stdout == "The sky is blue."


def test_a_stream_that_never_comes_back_exits_3_with_how_to_resume(fake):
    original = fake._events
    calls = []

    def always_drop(job_id, request):
        calls.append(request)
        fake.drop_after = 1 if len(calls) == 1 else 0  # one event, then nothing ever again
        return original(job_id, request)

    fake._events = always_drop
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "lost the event stream of job job-0001" in result.stderr
    assert "llorch jobs watch job-0001 --since 1" in result.stderr
    assert "Traceback" not in result.output
    assert len(calls) == 1 + 5, "the first stream and five reconnects"
    assert all(r.headers["Last-Event-ID"] == "1" for r in calls[1:])


def test_queue_full_is_refused_with_exit_7_and_retry_after(fake):
    def full(request):
        body = {
            "error": {
                "code": "QUEUE_FULL",
                "message": "queue is full (100 jobs); retry later",
                "details": {},
                "correlation_id": "c-1",
            }
        }
        return httpx.Response(429, json=body, headers={"Retry-After": "2"})

    fake._submit = full
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.REFUSED
    assert "QUEUE_FULL: queue is full (100 jobs); retry later" in result.stderr
    assert "retry after 2 s" in result.stderr
    parsed = json.loads(invoke(fake, "--json", "jobs", "submit", "-m", "m", "-p", "x").stdout)
    assert parsed["error"]["code"] == "QUEUE_FULL"
    assert parsed["error"]["http_status"] == 429
    assert parsed["error"]["exit_code"] == ExitCode.REFUSED


# -- watch ------------------------------------------------------------------------------------


def test_watch_replays_a_detached_job_from_the_start(fake):
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    result = invoke(fake, "jobs", "watch", job_id)
    assert result.exit_code == 0
    assert result.stdout == "The sky is blue."
    assert "completed" in result.stderr


def test_watch_since_resumes_after_that_event(fake):
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    result = invoke(fake, "jobs", "watch", job_id, "--since", "4")
    assert result.exit_code == 0
    assert result.stdout == " is blue."
    stream = [r for r in fake.requests if r.url.path.endswith("/events")][-1]
    assert stream.headers["Last-Event-ID"] == "4"


def test_ctrl_c_in_watch_detaches_without_cancelling_and_prints_the_resume_point(fake):
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    fake.interrupt_after = 3
    result = invoke(fake, "jobs", "watch", job_id)
    assert result.exit_code == ExitCode.INTERRUPTED
    assert f"llorch jobs watch {job_id} --since 3" in result.stderr
    assert not any(r.method == "DELETE" for r in fake.requests)
    resumed = invoke(fake, "jobs", "watch", job_id, "--since", "3")
    assert result.stdout + resumed.stdout == "The sky is blue."


def test_watch_json_and_unknown_job(fake):
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    events = _json_lines(invoke(fake, "jobs", "watch", job_id, "--json").stdout)
    assert [e["id"] for e in events] == [str(i) for i in range(1, 10)]
    assert events[-1]["event"] == "end"
    missing = invoke(fake, "jobs", "watch", "no-such-job")
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert "JOB_NOT_FOUND: job no-such-job not found" in missing.stderr


def test_watch_of_a_cancelled_job_exits_1(fake):
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    assert invoke(fake, "jobs", "cancel", job_id).exit_code == 0
    result = invoke(fake, "jobs", "watch", job_id)
    assert result.exit_code == ExitCode.JOB_FAILED
    assert f"job {job_id} cancelled" in result.stderr


# -- status / list / cancel -------------------------------------------------------------------


def test_status_shows_the_job_and_json_round_trips(fake):
    job_id = fake.add_job(
        "failed", pool_id="pool-a", worker_id="w1", tokens_generated=12, attempts=2,
        started_at=fake.now - 30, finished_at=fake.now - 20,
        error={"code": "WORKER_FAILED", "message": "worker died"},
    )  # fmt: skip
    result = invoke(fake, "jobs", "status", job_id)
    assert result.exit_code == 0
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert lines["status"] == "failed"
    assert lines["where"] == "pool-a/w1"
    assert lines["tokens"] == "12"
    assert lines["run time"] == "10.00s"
    assert lines["error"] == "WORKER_FAILED: worker died"
    parsed = json.loads(invoke(fake, "jobs", "status", job_id, "--json").stdout)
    assert parsed["job_id"] == job_id
    assert parsed["error"] == {"code": "WORKER_FAILED", "message": "worker died"}


def test_status_of_an_unknown_job_exits_4(fake):
    result = invoke(fake, "jobs", "status", "nope")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert result.stderr.count("\n") == 1, "one line"
    parsed = json.loads(invoke(fake, "jobs", "status", "nope", "--json").stdout)
    assert parsed["error"]["code"] == "JOB_NOT_FOUND"
    assert parsed["error"]["correlation_id"] == "test-correlation-id"


def test_list_filters_and_paginates(fake):
    for i in range(5):
        fake.add_job("queued", priority="batch" if i % 2 else "interactive", session_id="s1")
    fake.add_job("completed", session_id="s2")
    result = invoke(fake, "jobs", "list", "--status", "queued", "--limit", "2")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert rows[0].split("\t")[:3] == ["JOB", "STATUS", "PRIORITY"]
    assert len(rows) == 3
    assert "--cursor 2" in result.stderr
    request = fake.requests[-1]
    assert dict(request.url.params) == {"status": "queued", "limit": "2"}
    page2 = json.loads(invoke(fake, "jobs", "list", "-s", "queued", "--limit", "2",
                              "--cursor", "2", "--json").stdout)  # fmt: skip
    assert len(page2["jobs"]) == 2
    assert page2["next_cursor"] == "4"
    everything = json.loads(invoke(fake, "jobs", "list", "--all", "--limit", "2", "--json").stdout)
    assert len(everything["jobs"]) == 6
    assert everything["next_cursor"] is None
    batch = json.loads(invoke(fake, "jobs", "list", "--priority", "batch", "--json").stdout)
    assert {j["priority"] for j in batch["jobs"]} == {"batch"}
    s2 = json.loads(invoke(fake, "jobs", "list", "--session", "s2", "--json").stdout)
    assert [j["session_id"] for j in s2["jobs"]] == ["s2"]


def test_list_rejects_an_unknown_status_like_the_server(fake):
    result = invoke(fake, "jobs", "list", "--status", "done")
    assert result.exit_code == ExitCode.USAGE
    assert "INVALID_PARAMETER: status: must be one of queued, running" in result.stderr
    assert fake.requests == []


def test_cancel_is_idempotent_and_reports_each_job(fake):
    running = fake.add_job("running")
    done = fake.add_job("completed")
    result = invoke(fake, "jobs", "cancel", running, done)
    assert result.exit_code == 0
    assert f"job {running}: cancelled" in result.stdout
    assert f"job {done}: already completed; nothing to cancel" in result.stdout
    again = json.loads(invoke(fake, "jobs", "cancel", running, "--json").stdout)
    assert again["results"][0]["status"] == "cancelled"


def test_cancel_of_an_unknown_job_exits_4_after_trying_the_others(fake):
    running = fake.add_job("running")
    result = invoke(fake, "jobs", "cancel", "nope", running, "--json")
    assert result.exit_code == ExitCode.NOT_FOUND
    results = json.loads(result.stdout)["results"]
    assert results[0]["error"]["code"] == "JOB_NOT_FOUND"
    assert results[1]["status"] == "cancelled"


def test_token_events_with_a_text_field_are_printed_too(fake):
    original = fake._events

    def text_key(job_id, request):
        job = fake.jobs[job_id]
        job.events = [
            (i, name, {"i": d["i"], "text": d["t"]} if name == "token" else d)
            for i, name, d in job.events
        ]
        return original(job_id, request)

    fake._events = text_key
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.stdout == "The sky is blue."


def test_prompt_file_dash_reads_stdin(fake):
    result = invoke(fake, "jobs", "submit", "-m", "m", "--prompt-file", "-", stdin="piped")
    assert result.exit_code == 0
    assert json.loads(_posts(fake)[0].content)["prompt"] == "piped"


def test_a_daemon_that_does_not_answer_in_time_exits_3(fake):
    def slow(request):
        raise httpx.ConnectTimeout("timed out", request=request)

    fake.handle = slow
    result = invoke(fake, "--timeout", "0.5", "jobs", "list")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "(timed out)" in result.stderr


def test_a_daemon_restarting_mid_stream_is_retried(fake):
    """503 while the daemon comes back is transient once the stream had started."""
    original = fake._events
    calls = []

    def restarting(job_id, request):
        calls.append(request)
        if len(calls) == 1:
            fake.drop_after = 3
        if len(calls) == 2:
            return httpx.Response(503, json={"error": {"code": "INTERNAL", "message": "starting"}})
        return original(job_id, request)

    fake._events = restarting
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "The sky is blue."
    assert len(calls) == 3


def test_a_real_ctrl_c_while_an_event_is_printed_keeps_the_resume_point_exact(fake, monkeypatch):
    """SIGINT arriving in the middle of printing event 5: event 5 is shown, and the resume
    point printed is 5 — a later --since neither skips nor repeats it."""
    job_id = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "-d").stdout.strip()
    original = Output.json_line

    def json_line(self, document):
        original(self, document)
        if document.get("id") == "5":
            os.kill(os.getpid(), signal.SIGINT)  # delivered before json_line returns

    monkeypatch.setattr(Output, "json_line", json_line)
    result = invoke(fake, "jobs", "watch", job_id, "--json")
    assert result.exit_code == ExitCode.INTERRUPTED
    shown = [e for e in _json_lines(result.stdout) if e["event"] != "detached"]
    assert shown[-1]["id"] == "5"
    assert f"llorch jobs watch {job_id} --since 5" in result.stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler restored"


def test_list_shows_each_jobs_kind_in_the_last_column(fake):
    fake.add_job("completed", kind="chat")
    fake.add_job("queued", kind="completion")
    fake.add_job("queued")  # a /v2 task (the server's default kind)
    rows = invoke(fake, "jobs", "list").stdout.splitlines()
    assert rows[0].split("\t")[-1] == "KIND"
    assert sorted(r.split("\t")[-1] for r in rows[1:]) == ["chat", "completion", "task"]
