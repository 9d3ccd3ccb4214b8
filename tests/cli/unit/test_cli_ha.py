"""llorch with several orchestratord URLs (docs/cli.md, *Several orchestrators (HA)*).

One FakeOrchestratord stands for the shared database; each URL's host is an "instance" whose
behaviour the test scripts (up, refusing connections, timing out after the request was sent,
answering 503 like a proxy in front of a dead daemon)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from llorch.exitcodes import ExitCode
from llorch.settings import resolve_settings

from tests.support.llorch_fake import FakeOrchestratord, invoke

URLS = "http://orch-a:8080,http://orch-b:8080"

Behaviour = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


def up(request: httpx.Request, serve: Callable[[httpx.Request], httpx.Response]) -> httpx.Response:
    return serve(request)


def refused(request: httpx.Request, _serve: object) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def proxy_503(request: httpx.Request, _serve: object) -> httpx.Response:
    return httpx.Response(503, text="no healthy upstream")


def accepted_then_timed_out(
    request: httpx.Request, serve: Callable[[httpx.Request], httpx.Response]
) -> httpx.Response:
    serve(request)  # the daemon got it (the job exists) but the answer never came back
    raise httpx.ReadTimeout("timed out", request=request)


class Instances:
    """Routes each request by host to its instance's behaviour; records the hosts."""

    def __init__(self, fake: FakeOrchestratord, **hosts: Behaviour) -> None:
        self.fake = fake
        self.hosts = {name.replace("_", "-"): b for name, b in hosts.items()}
        self.seen: list[tuple[str, str, str]] = []
        self._serve = fake.handle
        fake.handle = self.handle  # type: ignore[method-assign]

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        self.seen.append((host, request.method, request.url.path))
        return self.hosts[host](request, self._serve)

    def on(self, host: str) -> list[tuple[str, str]]:
        return [(m, p) for h, m, p in self.seen if h == host]


@pytest.fixture
def fake() -> FakeOrchestratord:
    return FakeOrchestratord(tokens=["The", " sky", " is", " blue", "."])


def test_a_refused_first_url_is_skipped_for_reads(fake: FakeOrchestratord) -> None:
    fake.add_job("running")
    net = Instances(fake, orch_a=refused, orch_b=up)
    result = invoke(fake, "--url", URLS, "jobs", "list")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert "job-0001" in result.stdout
    assert net.on("orch-a") == [("GET", "/v2/tasks")]
    assert net.on("orch-b") == [("GET", "/v2/tasks")]


def test_the_env_takes_several_urls_and_a_submit_whose_connection_failed_goes_to_the_next(
    fake: FakeOrchestratord,
) -> None:
    net = Instances(fake, orch_a=refused, orch_b=up)
    result = invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", env={"LLORCH_URL": URLS})
    assert result.exit_code == ExitCode.OK, result.stderr
    assert result.stdout == "The sky is blue."
    assert len(fake.jobs) == 1
    assert net.on("orch-a") == [("POST", "/v2/tasks")]  # refused before anything was sent
    assert ("POST", "/v2/tasks") in net.on("orch-b")
    # The client stays on the instance that works: the stream came from orch-b too.
    assert all(m == "GET" for m, _ in net.on("orch-b")[1:])


def test_a_submit_that_timed_out_after_sending_is_not_retried(fake: FakeOrchestratord) -> None:
    net = Instances(fake, orch_a=accepted_then_timed_out, orch_b=up)
    result = invoke(fake, "--url", URLS, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "timed out" in result.stderr
    assert "Traceback" not in result.output
    assert len(fake.jobs) == 1, "exactly the one job the first instance accepted"
    assert net.on("orch-b") == [], "never sent twice"


def test_a_submit_answered_503_by_a_proxy_is_not_retried(fake: FakeOrchestratord) -> None:
    net = Instances(fake, orch_a=proxy_503, orch_b=up)
    result = invoke(fake, "--url", URLS, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code != ExitCode.OK
    assert net.on("orch-b") == []
    assert fake.jobs == {}


def test_reads_and_cancels_move_on_after_a_503_or_a_timeout(fake: FakeOrchestratord) -> None:
    job = fake.add_job("running")
    net = Instances(fake, orch_a=proxy_503, orch_b=up)
    assert invoke(fake, "--url", URLS, "jobs", "status", job).exit_code == ExitCode.OK
    assert net.on("orch-b") == [("GET", f"/v2/tasks/{job}")]
    net2 = Instances(FakeOrchestratord(), orch_a=accepted_then_timed_out, orch_b=up)
    net2.fake.add_job("running")
    result = invoke(net2.fake, "--url", URLS, "jobs", "cancel", "job-0001")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert net2.on("orch-b") == [("DELETE", "/v2/tasks/job-0001")]  # harmless to repeat
    assert net2.fake.jobs["job-0001"].status["status"] == "cancelled"


def test_every_instance_down_names_them_all(fake: FakeOrchestratord) -> None:
    Instances(fake, orch_a=refused, orch_b=refused)
    result = invoke(fake, "--url", URLS, "jobs", "list")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "http://orch-a:8080, http://orch-b:8080" in result.stderr
    assert "connection refused" in result.stderr


def test_a_follow_resumes_on_the_next_instance_without_gap_or_duplicate(
    fake: FakeOrchestratord,
) -> None:
    hosts: dict[str, Behaviour] = {"orch_a": up, "orch_b": up}
    net = Instances(fake, **hosts)
    streams: list[str] = []

    def events(request: httpx.Request, serve: Callable[[httpx.Request], httpx.Response]):
        if request.url.path.endswith("/events"):
            streams.append(request.url.host)
            if request.url.host == "orch-a":
                fake.drop_after = 3  # queued, started, "The" — then orch-a dies
                net.hosts["orch-a"] = refused
        return serve(request)

    net.hosts["orch-a"] = events
    net.hosts["orch-b"] = events
    result = invoke(fake, "--url", URLS, "jobs", "submit", "-m", "m", "-p", "hi")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert result.stdout == "The sky is blue.", "no token lost or repeated"
    assert streams == ["orch-a", "orch-b"]
    resumed = [r for r in fake.requests if r.url.host == "orch-b"]
    assert resumed[-1].headers["Last-Event-ID"] == "3"


def test_watch_with_the_first_instance_down_reads_from_the_second(
    fake: FakeOrchestratord,
) -> None:
    assert invoke(fake, "jobs", "submit", "-m", "m", "-p", "hi", "--detach").exit_code == 0
    net = Instances(fake, orch_a=refused, orch_b=up)
    result = invoke(fake, "--url", URLS, "jobs", "watch", "job-0001")
    assert result.exit_code == ExitCode.OK, result.stderr
    assert result.stdout == "The sky is blue."
    assert net.on("orch-a") == [("GET", "/v2/tasks/job-0001/events")]


def test_settings_take_a_list_in_the_file_and_refuse_a_bad_entry(tmp_path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('url = ["http://a:1/", "http://b:2", "http://a:1"]\n')
    settings = resolve_settings({}, {}, path)
    assert settings.urls == ["http://a:1", "http://b:2"]
    assert settings.describe()["url"]["value"] == "http://a:1,http://b:2"
    assert resolve_settings({"url": " http://x:1 , http://y:2/"}, {}).urls == [
        "http://x:1",
        "http://y:2",
    ]
    bad = invoke(None, "--url", "http://a:1,localhost:8080", "jobs", "list")
    assert bad.exit_code == ExitCode.USAGE
    assert "localhost:8080" in bad.stderr


def test_a_follow_with_every_instance_down_names_them_all(fake: FakeOrchestratord) -> None:
    Instances(fake, orch_a=refused, orch_b=refused)
    result = invoke(fake, "--url", URLS, "jobs", "watch", "job-0001")
    assert result.exit_code == ExitCode.UNREACHABLE
    assert "http://orch-a:8080, http://orch-b:8080" in result.stderr
