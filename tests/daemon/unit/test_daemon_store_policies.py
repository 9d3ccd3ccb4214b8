"""The Store protocol's applied scheduler policies and pool inventory: the same behaviour
from the in-memory store, SQLite and PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from orchestratord.postgres_store import PostgresStore
from orchestratord.sqlite_store import SqliteStore
from orchestratord.store import FencedOut, MemoryStore, PolicyRecord, PoolRecord, Store

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "d.sqlite3")
    else:
        s = PostgresStore(request.getfixturevalue("postgres_dsn"))
    await s.open()
    yield s
    await s.close()


def policy(version: int, **kw: object) -> PolicyRecord:
    fields: dict[str, object] = {
        "policy": "rhai",
        "placement": "spread",
        "script": "fn schedule(ctx) { platform_schedule(ctx) }",
        "applied_at": 1000.0 + version,
        "applied_by": "client",
        "fingerprint": "sha256:1a2b3c4d",
    }
    fields.update(kw)
    return PolicyRecord(version, **fields)  # type: ignore[arg-type]


async def test_no_policy_is_active_at_first(store: Store) -> None:
    assert await store.active_policy() is None


async def test_the_latest_applied_policy_is_active_and_round_trips(store: Store) -> None:
    first = policy(1)
    second = policy(2, policy="fifo", placement="pack", script=None, rules=None)
    await store.save_policy(first)
    assert await store.active_policy() == first
    await store.save_policy(second)
    assert await store.active_policy() == second
    rules = policy(3, policy="rules", script=None, rules="rules: []\n", applied_by="anonymous")
    await store.save_policy(rules)
    assert await store.active_policy() == rules


async def test_a_policy_version_is_stored_once(store: Store) -> None:
    await store.save_policy(policy(1))
    with pytest.raises(Exception):  # noqa: B017 - each backend's own error
        await store.save_policy(policy(1, policy="fifo"))
    active = await store.active_policy()
    assert active is not None and active.policy == "rhai"


async def test_the_history_of_policies_is_kept(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "d.sqlite3")
    await s.open()
    for v in (1, 2, 3):
        await s.save_policy(policy(v))
    await s.close()
    with sqlite3.connect(tmp_path / "d.sqlite3") as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM scheduler_policies")]
    assert sorted(versions) == [1, 2, 3]


def pool(pool_id: str, beat: float = 1000.0, token: str = "") -> PoolRecord:
    inventory = f'{{"pool_id": "{pool_id}", "endpoint": "http://{pool_id}"}}'
    return PoolRecord(pool_id, inventory, beat, token)


async def test_pools_upsert_remove_and_load_by_id(store: Store) -> None:
    assert await store.load_pools() == []
    await store.save_pools([pool("b"), pool("a", token="sha256:00ff00ff")])
    assert await store.load_pools() == [pool("a", token="sha256:00ff00ff"), pool("b")]
    await store.save_pools([pool("b", beat=1002.5)], removed=["a"])
    assert await store.load_pools() == [pool("b", beat=1002.5)]
    await store.save_pools([], removed=["b", "never-stored"])
    assert await store.load_pools() == []


async def test_policies_and_pools_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite3"
    s = SqliteStore(path)
    await s.open()
    await s.save_policy(policy(1))
    await s.save_pools([pool("a")])
    await s.close()
    again = SqliteStore(path)
    await again.open()
    assert await again.active_policy() == policy(1)
    assert await again.load_pools() == [pool("a")]
    await again.close()


async def _lease(dsn: str, holder: str, epoch: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO leader_lease (name, holder, epoch, expires_at) "
            "VALUES ('test', %s, %s, now() + interval '1 minute') ON CONFLICT (name) "
            "DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch",
            (holder, epoch),
        )


async def test_postgres_writes_are_fenced_with_the_term(postgres_dsn: str) -> None:
    s = PostgresStore(postgres_dsn)
    await s.open()
    try:
        await _lease(postgres_dsn, "old", 1)
        s.term_fence = ("test", "old", 1)
        await s.save_policy(policy(1))
        await s.save_pools([pool("a")])
        await _lease(postgres_dsn, "new", 2)  # another daemon took over
        with pytest.raises(FencedOut):
            await s.save_policy(policy(2))
        with pytest.raises(FencedOut):
            await s.save_pools([pool("b")], removed=["a"])
        assert await s.active_policy() == policy(1)  # nothing of the refused writes
        assert await s.load_pools() == [pool("a")]
        s.term_fence = ("test", "new", 2)
        await s.save_policy(policy(2))
        assert await s.active_policy() == policy(2)
    finally:
        await s.close()
