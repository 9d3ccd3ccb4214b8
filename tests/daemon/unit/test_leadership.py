"""The leader lease and its fencing epoch (orchestratord.leadership) on a real PostgreSQL
(a throwaway cluster, ``tests/support/postgres.py``; a fresh database per test).

TTLs are short (about a second) to keep the tests fast; "pauses" are simulated by not
renewing, a dead database connection by killing the lease's backend and pointing its DSN at
a closed port. The real SIGSTOP of a contending process is in
``tests/daemon/integration/test_leadership_processes.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from orchestrator_core import Job, JobParams
from orchestratord.leadership import PostgresLease
from orchestratord.postgres_store import MIGRATIONS, PostgresStore
from orchestratord.store import FencedOut, JobRow, StoredEvent

pytestmark = pytest.mark.asyncio

TTL = 1.0


def row(n: int) -> JobRow:
    job = Job(
        job_id=f"job-{n:04d}",
        model_ref="m1",
        prompt=f"prompt {n}",
        params=JobParams(max_tokens=5),
        created_at=1000.0 + n,
        queued_at=1000.0 + n,
    )
    return JobRow(job=job, timeout_s=30.0)


LeaseFactory = Callable[..., PostgresLease]


@pytest.fixture
async def leases(postgres_dsn: str) -> AsyncIterator[LeaseFactory]:
    made: list[PostgresLease] = []

    def make(**kw: Any) -> PostgresLease:
        kw.setdefault("ttl_s", TTL)
        lease = PostgresLease(postgres_dsn, **kw)
        made.append(lease)
        return lease

    yield make
    for lease in made:
        await lease.close(release=False)


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_dsn)
    await s.open()
    yield s
    await s.close()


async def lease_row(dsn: str) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT holder, epoch, expires_at > clock_timestamp() FROM leader_lease"
        )
        found = await cur.fetchone()
    assert found is not None
    return tuple(found)


async def kill_backends(dsn: str, application_name_like: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s",
            (application_name_like,),
        )
        found = await cur.fetchone()
    return int(found[0]) if found else 0


async def test_migration_adds_the_lease_table_and_the_fence_function(
    store: PostgresStore, postgres_dsn: str
) -> None:
    assert await store.schema_version() == MIGRATIONS[-1][0] >= 2
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'leader_lease' ORDER BY ordinal_position"
        )
        cols = await cur.fetchall()
    assert cols == [
        ("name", "text"),
        ("holder", "text"),
        ("epoch", "bigint"),
        ("expires_at", "timestamp with time zone"),
        ("renewed_at", "timestamp with time zone"),
    ]


async def test_exactly_one_of_three_leads_and_epochs_strictly_increase(
    leases: LeaseFactory, postgres_dsn: str
) -> None:
    trio = [leases(instance_id=f"node-{i}") for i in range(3)]
    got = await asyncio.gather(*(lease.try_acquire() for lease in trio))
    assert sum(e is not None for e in got) == 1
    assert [e for e in got if e is not None] == [1]
    epochs = [1]
    leader = trio[got.index(1)]
    for _ in range(3):
        # Followers cannot take a live lease.
        assert [await x.try_acquire() for x in trio if x is not leader] == [None, None]
        assert await leader.renew()
        # The leader "pauses" (stops renewing): after the TTL another one takes over.
        await asyncio.sleep(TTL + 0.05)
        assert not leader.is_leader()  # its local deadline passed
        others = [x for x in trio if x is not leader]
        got = await asyncio.gather(*(x.try_acquire() for x in others))
        assert sum(e is not None for e in got) == 1
        new_epoch = next(e for e in got if e is not None)
        assert new_epoch > epochs[-1]
        epochs.append(new_epoch)
        old, leader = leader, others[got.index(new_epoch)]
        assert not await old.renew()  # the old one learns it lost
        assert old.role == "follower"
        assert await lease_row(postgres_dsn) == (leader.instance_id, new_epoch, True)
    assert epochs == [1, 2, 3, 4]


async def test_a_deposed_leaders_fenced_commit_is_refused_and_writes_nothing(
    leases: LeaseFactory, store: PostgresStore
) -> None:
    a, b = leases(instance_id="a"), leases(instance_id="b")
    assert await a.try_acquire() == 1
    fence_a = a.fence()
    assert fence_a == ("orchestratord", "a", 1)
    await store.commit(jobs=[row(1)], fence=fence_a)  # a current epoch commits
    await asyncio.sleep(TTL + 0.05)  # a is paused: no renewal
    assert a.fence() is None  # locally, a already knows it must not act
    assert await b.try_acquire() == 2
    # The paused leader wakes up and finishes a write it had started with its old token.
    with pytest.raises(FencedOut, match="epoch 1"):
        await store.commit(
            jobs=[row(2)], events=[StoredEvent("job-0001", 1, "end", "{}")], fence=fence_a
        )
    assert await store.get_job("job-0002") is None
    assert await store.last_event_id("job-0001") == 0
    assert not await a.renew()
    assert a.lost_leadership.is_set()
    # The new leader's fenced writes commit; an unfenced one (a submission) in the same
    # group commit as a refused one still commits.
    results = await asyncio.gather(
        store.commit(jobs=[row(3)], fence=fence_a),
        store.commit(jobs=[row(4)]),
        store.commit(events=[StoredEvent("job-0001", 1, "end", "{}")], fence=b.fence()),
        return_exceptions=True,
    )
    assert isinstance(results[0], FencedOut)
    assert results[1:] == [None, None]
    assert await store.get_job("job-0003") is None
    assert await store.get_job("job-0004") is not None
    assert await store.last_event_id("job-0001") == 1


async def test_a_fenced_transaction_is_checked_again_at_commit(
    leases: LeaseFactory, postgres_dsn: str
) -> None:
    """A leader paused in the middle of a fenced transaction holds no lock that blocks the
    takeover, and its COMMIT is refused; a fenced COMMIT before the takeover goes through."""
    a, b = leases(instance_id="a"), leases(instance_id="b")
    assert await a.try_acquire() == 1
    await asyncio.sleep(TTL + 0.05)  # expired, not yet taken over
    fence_a = ("orchestratord", "a", 1)
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        async with conn.transaction():  # commits: nobody took over yet
            await conn.execute("SELECT llorch_fence(%s, %s, %s)", fence_a)
            await conn.execute("CREATE TABLE written_under_epoch_1 (x int)")

        async def paused_write() -> None:
            async with conn.transaction():
                await conn.execute("SELECT llorch_fence(%s, %s, %s)", fence_a)
                await conn.execute("INSERT INTO written_under_epoch_1 VALUES (1)")
                # The writer "pauses" here; the takeover is not blocked by it.
                assert await asyncio.wait_for(b.try_acquire(), 2) == 2

        with pytest.raises(psycopg.Error) as refused:
            await paused_write()
        assert refused.value.sqlstate == "LF001"  # raised by the COMMIT
        cur = await conn.execute("SELECT count(*) FROM written_under_epoch_1")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("SELECT count(*) FROM leader_fence_claims")
        assert await cur.fetchone() == (0,)  # claims do not pile up
        with pytest.raises(psycopg.Error) as early:
            await conn.execute("SELECT llorch_fence(%s, %s, %s)", fence_a)
        assert early.value.sqlstate == "LF001"  # a stale epoch fails fast too


async def test_release_hands_the_lease_over_at_once(
    leases: LeaseFactory, store: PostgresStore
) -> None:
    a, b = leases(instance_id="a"), leases(instance_id="b")
    assert await a.try_acquire() == 1
    fence_a = a.fence()
    assert await b.try_acquire() is None
    await a.release()
    assert a.role == "follower"
    assert a.last_lost_reason == "released"
    assert await b.try_acquire() == 2  # no TTL to wait for
    with pytest.raises(FencedOut):
        await store.commit(jobs=[row(1)], fence=fence_a)


async def test_the_loop_elects_one_and_fails_over_on_release(leases: LeaseFactory) -> None:
    elected: list[tuple[str, int]] = []
    pair = [leases(instance_id=n, on_elected=lambda e, n=n: elected.append((n, e))) for n in "ab"]
    for lease in pair:
        lease.start()
    await asyncio.wait_for(
        asyncio.wait(
            [asyncio.create_task(x.became_leader.wait()) for x in pair],
            return_when=asyncio.FIRST_COMPLETED,
        ),
        5,
    )
    await asyncio.sleep(TTL)  # several renewals: the leader stays, the other follows
    leaders = [x for x in pair if x.is_leader()]
    assert len(leaders) == 1
    assert len(elected) == 1
    leader, follower = leaders[0], next(x for x in pair if x is not leaders[0])
    t0 = time.monotonic()
    await leader.close()  # clean shutdown releases the lease
    await asyncio.wait_for(follower.became_leader.wait(), 2 * follower.renew_every_s + 0.5)
    assert time.monotonic() - t0 < TTL  # faster than waiting for expiry
    assert follower.epoch == 2
    assert elected == [(leader.instance_id, 1), (follower.instance_id, 2)]


async def test_the_loop_reconnects_after_its_connection_is_killed(
    leases: LeaseFactory, postgres_dsn: str
) -> None:
    lease = leases(instance_id="a")
    lease.start()
    await asyncio.wait_for(lease.became_leader.wait(), 5)
    assert await kill_backends(postgres_dsn, "orchestratord-lease a%") == 1
    await asyncio.sleep(TTL)
    assert lease.reconnects >= 1
    assert lease.is_leader()  # renewed on the new connection, before its deadline
    assert lease.epoch == 1
    assert not lease.lost_leadership.is_set()


async def test_a_leader_cut_off_from_the_database_steps_down_at_its_local_deadline(
    leases: LeaseFactory, postgres_dsn: str
) -> None:
    a, b = leases(instance_id="a"), leases(instance_id="b")
    a.start()
    await asyncio.wait_for(a.became_leader.wait(), 5)
    b.start()
    await asyncio.sleep(0.2)
    a.dsn = "postgresql://nobody:x@127.0.0.1:1/none"  # a cannot reconnect
    t_cut = time.monotonic()
    await kill_backends(postgres_dsn, "orchestratord-lease a%")
    await asyncio.wait_for(a.lost_leadership.wait(), TTL + 0.5)
    # It stepped down by its own clock, no later than ttl - margin after its last renewal.
    assert time.monotonic() - t_cut <= TTL - a.margin_s + 0.1
    assert a.last_lost_reason == "local deadline passed"
    assert not a.is_leader()
    assert a.fence() is None
    # b takes over once the lease expired in the database (within ttl + one attempt).
    await asyncio.wait_for(b.became_leader.wait(), TTL + 2 * b.renew_every_s + 0.5)
    assert b.epoch == 2


async def test_invalid_timings_are_refused(postgres_dsn: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        PostgresLease(postgres_dsn, ttl_s=0)
    with pytest.raises(ValueError, match="renew_every_s"):
        PostgresLease(postgres_dsn, ttl_s=1, renew_every_s=1)
