"""The pool's link with several orchestrators (docs/pool-agent.md, *Several orchestrators
(HA)*): one URL at a time; a dead one or a ``503``/``421`` moves the link to the next URL (or
to the one the ``X-Orchestrator-Leader`` header names) where it registers again. Fake
orchestrators are tiny real HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from llorch_pool.agent import PoolAgentConfig
from llorch_pool.agent.cli import main as pool_main
from llorch_pool.agent.link import LEADER_HEADER, OrchestratorLink, split_urls
from llorch_pool.protocol import PoolInventory
from llorch_pool.serving import RunningServer, free_port, serve_app
from orchestrator_core.errors import ConfigInvalid
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

pytestmark = pytest.mark.asyncio

Serve = Callable[["FakeOrchestrator"], Awaitable[str]]


class FakeOrchestrator:
    """Records registrations and heartbeats; ``leader = False`` answers 503 NOT_LEADER
    (with ``hint`` in ``X-Orchestrator-Leader`` when set)."""

    def __init__(self, *, leader: bool = True, hint: str | None = None) -> None:
        self.leader = leader
        self.hint = hint
        self.registrations = 0
        self.heartbeats = 0
        self.refusals = 0
        self.known: set[str] = set()
        self.app = Starlette(
            routes=[
                Route("/v2/pools/register", self._register, methods=["POST"]),
                Route("/v2/pools/{pool_id}/heartbeat", self._heartbeat, methods=["POST"]),
            ]
        )

    def _not_leader(self) -> Response:
        self.refusals += 1
        headers = {LEADER_HEADER: self.hint} if self.hint else {}
        body = {"error": {"code": "NOT_LEADER", "message": "not the leader", "details": {}}}
        return JSONResponse(body, status_code=503, headers=headers)

    async def _register(self, request: Request) -> Response:
        if not self.leader:
            return self._not_leader()
        body = await request.json()
        self.known.add(body["pool_id"])
        self.registrations += 1
        return JSONResponse({"pool_id": body["pool_id"]})

    async def _heartbeat(self, request: Request) -> Response:
        if not self.leader:
            return self._not_leader()
        if request.path_params["pool_id"] not in self.known:
            return JSONResponse({"error": {"code": "POOL_NOT_FOUND"}}, status_code=404)
        self.heartbeats += 1
        return JSONResponse({})


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RunningServer] = []

    async def start(fake: FakeOrchestrator) -> str:
        server = await serve_app(fake.app)
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        await server.stop()


@contextlib.asynccontextmanager
async def running_link(urls: list[str]) -> AsyncIterator[OrchestratorLink]:
    def inventory() -> PoolInventory:
        return PoolInventory(pool_id="p1", endpoint="http://pool", sent_at=time.time())

    async with httpx.AsyncClient(trust_env=False) as http:
        link = OrchestratorLink(
            orchestrator_url=urls,
            pool_id="p1",
            inventory=inventory,
            http=http,
            interval_s=0.05,
            max_backoff_s=0.1,
        )
        task = asyncio.create_task(link.run())
        try:
            yield link
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_dead_first_orchestrator_moves_the_link_to_the_second(serve: Serve) -> None:
    second = FakeOrchestrator()
    url = await serve(second)
    dead = f"http://127.0.0.1:{free_port()}"
    async with running_link([dead, url]) as link:
        await eventually(lambda: second.heartbeats >= 3)
        assert link.base == url
        assert second.registrations == 1
        assert link.stats.switches == 1


async def test_a_follower_sends_the_link_on_and_it_registers_with_the_leader(
    serve: Serve,
) -> None:
    leader = FakeOrchestrator()
    follower = FakeOrchestrator(leader=False)
    leader_url = await serve(leader)
    follower_url = await serve(follower)
    async with running_link([follower_url, leader_url]) as link:
        await eventually(lambda: leader.heartbeats >= 2)
        assert link.base == leader_url
        assert follower.refusals >= 1 and follower.registrations == 0


async def test_the_leader_hint_is_followed_past_the_next_url(serve: Serve) -> None:
    leader = FakeOrchestrator()
    leader_url = await serve(leader)
    follower = FakeOrchestrator(leader=False, hint=leader_url + "/")
    other = FakeOrchestrator(leader=False)  # next in the list: must be skipped
    follower_url = await serve(follower)
    other_url = await serve(other)
    async with running_link([follower_url, other_url, leader_url]) as link:
        await eventually(lambda: leader.heartbeats >= 2)
        assert link.base == leader_url
        assert other.refusals == 0
        assert link.stats.switches == 1


async def test_a_hint_outside_the_configured_list_is_ignored(serve: Serve) -> None:
    leader = FakeOrchestrator()
    leader_url = await serve(leader)
    stranger = f"http://127.0.0.1:{free_port()}"
    follower = FakeOrchestrator(leader=False, hint=stranger)
    follower_url = await serve(follower)
    async with running_link([follower_url, leader_url]) as link:
        await eventually(lambda: leader.heartbeats >= 1)
        assert link.base == leader_url


async def test_losing_the_leadership_mid_run_re_registers_with_the_new_leader(
    serve: Serve,
) -> None:
    first, second = FakeOrchestrator(), FakeOrchestrator(leader=False)
    first_url = await serve(first)
    second_url = await serve(second)
    async with running_link([first_url, second_url]) as link:
        await eventually(lambda: first.heartbeats >= 2)
        first.leader, second.leader = False, True
        second.hint = None
        first.hint = second_url
        await eventually(lambda: second.heartbeats >= 2)
        assert link.base == second_url
        assert second.registrations == 1  # registered again there before heartbeating


async def test_one_url_keeps_the_old_behaviour_on_503(serve: Serve) -> None:
    only = FakeOrchestrator(leader=False)
    url = await serve(only)
    async with running_link([url]) as link:
        await eventually(lambda: only.refusals >= 2)
        only.leader = True
        await eventually(lambda: only.heartbeats >= 1)
        assert link.stats.switches == 0


async def test_urls_are_split_on_commas_and_deduplicated() -> None:
    assert split_urls("http://a:1/, http://b:2") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a:1", "http://b:2,http://a:1"]) == ["http://a:1", "http://b:2"]


GOOD = """
pool_id = "p"
listen_port = 0
gpu_detection = "config"
[[gpus]]
gpu_id = "0"
vram_gb = 1
"""


async def test_the_configuration_takes_one_url_a_list_or_a_comma_separated_string() -> None:
    one = PoolAgentConfig.from_toml('orchestrator_url = "http://a:1"' + GOOD, env={})
    assert one.orchestrator_urls == ["http://a:1"]
    listed = PoolAgentConfig.from_toml(
        'orchestrator_url = ["http://a:1", "http://b:2"]' + GOOD, env={}
    )
    assert listed.orchestrator_urls == ["http://a:1", "http://b:2"]
    commas = PoolAgentConfig.from_toml('orchestrator_url = "http://a:1,http://b:2"' + GOOD, env={})
    assert commas.orchestrator_urls == ["http://a:1", "http://b:2"]
    with pytest.raises(ConfigInvalid, match="orchestrator_url"):
        PoolAgentConfig.from_toml('orchestrator_url = ["http://a:1", "ftp://b"]' + GOOD, env={})
    with pytest.raises(ConfigInvalid, match="orchestrator_url"):
        PoolAgentConfig.from_toml("orchestrator_url = []" + GOOD, env={})


async def test_the_orchestrator_flag_replaces_the_files_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pool.toml"
    path.write_text('orchestrator_url = "http://a:1"' + GOOD)
    argv = ["--config", str(path), "--check", "--orchestrator", "http://b:2,http://c:3"]
    assert pool_main([*argv, "--orchestrator", "http://d:4"]) == 0
    assert "orchestrator http://b:2, http://c:3, http://d:4)" in capsys.readouterr().out
    assert pool_main(["--config", str(path), "--check", "--orchestrator", "ftp://x"]) == 2
    assert "orchestrator_url" in capsys.readouterr().err
