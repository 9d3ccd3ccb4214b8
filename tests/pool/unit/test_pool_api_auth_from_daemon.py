"""The daemon's pool client against a real pool agent whose API needs a token.

Known bug: ``HttpPoolAgentClient`` sent no ``Authorization`` header, so a pool agent with an
``api_token`` refused the daemon's worker starts and stops (401). The daemon cannot know the
agent's ``api_token``; it knows the pool token the agent registers with, and the agent now
accepts that token too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from llorch_pool.serving import free_port
from llorch_pool.sim import SimEngineConfig, SimModel, SimulatedPool
from orchestrator_core import OrchestratorConfig
from orchestratord.logs import fingerprint
from orchestratord.pool_agents import HttpPoolAgentClient, PoolRequestFailed
from orchestratord.testing import make_config

pytestmark = pytest.mark.asyncio

GB = 1_000_000_000
POOL_TOKEN = "pool-token-0123456789abcdef"
OTHER_POOL_TOKEN = "pool-token-two-0123456789ab"
API_TOKEN = "pool-api-key-0123456789"


@pytest.fixture
async def pool() -> AsyncIterator[SimulatedPool]:
    agent = SimulatedPool(
        pool_id="sim-1",
        orchestrator_url=f"http://127.0.0.1:{free_port()}",  # nobody: the link just retries
        models=[SimModel("m1", 1 * GB)],
        engine=SimEngineConfig(ttft_s=0.0, tokens_per_s=0.0, load_time_s=0.0),
        token=POOL_TOKEN,
        api_token=API_TOKEN,
        max_backoff_s=0.5,
        stop_grace_s=1.0,
    )
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


def lab_config(*tokens: str) -> OrchestratorConfig:
    return make_config(
        mode="lab",
        auth={"clients": [{"token": "operator-token-0123456789"}], "pool_tokens": list(tokens)},
    )


async def test_the_daemons_client_starts_and_stops_workers_on_a_pool_with_an_api_token(
    pool: SimulatedPool,
) -> None:
    client = HttpPoolAgentClient.for_config(lab_config(POOL_TOKEN))
    try:
        wid = await client.start_worker(
            pool.url, pool_id="sim-1", model_ref="m1", gpu_id="0", correlation_id="c-1"
        )
        assert pool.workers.get(wid).model_ref == "m1"
        await client.stop_worker(pool.url, wid, correlation_id="c-2")
    finally:
        await client.aclose()


async def test_with_several_pool_tokens_the_client_sends_the_one_the_pool_registered_with(
    pool: SimulatedPool,
) -> None:
    config = lab_config(OTHER_POOL_TOKEN, POOL_TOKEN)
    # Unknown registration: no token is sent (never one pool's token to another pool).
    blind = HttpPoolAgentClient.for_config(config)
    try:
        assert blind.token_for(pool.url) is None
        with pytest.raises(PoolRequestFailed) as info:
            await blind.start_worker(
                pool.url, pool_id="sim-1", model_ref="m1", gpu_id="0", correlation_id="c"
            )
        assert info.value.code == "UNAUTHORIZED"
    finally:
        await blind.aclose()
    registered = {pool.url: fingerprint(POOL_TOKEN)}
    client = HttpPoolAgentClient.for_config(
        config,
        registered_fingerprint=registered.get,
    )
    try:
        assert client.token_for(pool.url) == POOL_TOKEN
        wid = await client.start_worker(
            pool.url, pool_id="sim-1", model_ref="m1", gpu_id="0", correlation_id="c"
        )
        await client.stop_worker(pool.url, wid, correlation_id="c")
    finally:
        await client.aclose()


async def test_the_pool_still_refuses_other_tokens(pool: SimulatedPool) -> None:
    client = HttpPoolAgentClient(token=OTHER_POOL_TOKEN)
    try:
        with pytest.raises(PoolRequestFailed) as info:
            await client.start_worker(
                pool.url, pool_id="sim-1", model_ref="m1", gpu_id="0", correlation_id="c"
            )
        assert info.value.code == "FORBIDDEN"
    finally:
        await client.aclose()
    plain = HttpPoolAgentClient(token=API_TOKEN)
    try:
        wid = await plain.start_worker(
            pool.url, pool_id="sim-1", model_ref="m1", gpu_id="0", correlation_id="c"
        )
        await plain.stop_worker(pool.url, wid, correlation_id="c")
    finally:
        await plain.aclose()


async def test_home_mode_sends_no_token() -> None:
    client = HttpPoolAgentClient.for_config(make_config())
    assert client.token_for("http://pool") is None
    await client.aclose()
