"""Cross-daemon LISTEN/NOTIFY (orchestratord.pg_bus) and a follower's streams of remote jobs
(orchestratord.remote_streams) on a real PostgreSQL (a throwaway cluster,
``tests/support/postgres.py``; a fresh database per test).

The "leader" here is simulated: it commits lifecycle events to a PostgresStore, publishes
deferred token events only on the bus, and stores them with the terminal event — as
``services/events.py`` does. Lost notifications are simulated by not publishing them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestrator_core import Job, JobParams
from orchestratord.pg_bus import (
    EVENTS_CHANNEL,
    JOBS_CHANNEL,
    MAX_PAYLOAD_BYTES,
    EventNote,
    PgBus,
    decode_event,
    encode_event,
)
from orchestratord.postgres_store import PostgresStore
from orchestratord.remote_streams import RemoteStreams
from orchestratord.store import JobRow, StoredEvent

pytestmark = pytest.mark.asyncio

LOST_GAP = 1_000_000  # services.events.LOST_EVENTS_GAP


def row(job_id: str) -> JobRow:
    job = Job(
        job_id=job_id,
        model_ref="m1",
        prompt="p",
        params=JobParams(max_tokens=5),
        created_at=1000.0,
        queued_at=1000.0,
    )
    return JobRow(job=job, timeout_s=30.0)


def ev(job_id: str, i: int, kind: str, data: str | None = None) -> StoredEvent:
    return StoredEvent(job_id, i, kind, data if data is not None else f'{{"i":{i}}}')


def job_events(
    job_id: str, n_deferred: int, *, big: frozenset[int] = frozenset()
) -> list[StoredEvent]:
    """queued, started, first token (stored), ``n_deferred`` tokens (deferred), end."""
    kinds = ["queued", "started", "token"] + ["token"] * n_deferred + ["end"]
    out = []
    for i, kind in enumerate(kinds, start=1):
        data = '{"t":"' + "x" * 9000 + '"}' if i in big else None
        out.append(ev(job_id, i, kind, data))
    return out


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(postgres_dsn)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def buses(postgres_dsn: str) -> AsyncIterator[Callable[..., PgBus]]:
    made: list[PgBus] = []

    def make(**kw: object) -> PgBus:
        bus = PgBus(postgres_dsn, **kw)  # type: ignore[arg-type]
        made.append(bus)
        return bus

    yield make
    for bus in made:
        await bus.close()


async def kill_backends(dsn: str, like: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s",
            (like,),
        )
        found = await cur.fetchone()
    return int(found[0]) if found else 0


# -- PgBus ---------------------------------------------------------------------------------


async def test_event_payloads_round_trip_and_big_data_is_left_out() -> None:
    small = ev("job-1", 7, "token", '{"t":"hé \\u0000 \\"q\\""}')
    note = decode_event(encode_event(small))
    assert note == EventNote("job-1", 7, "token", small.data) and note.event() == small
    big = ev("job-1", 8, "token", '{"t":"' + "é" * 4000 + '"}')  # 8000+ bytes in UTF-8
    payload = encode_event(big)
    assert len(payload.encode()) <= MAX_PAYLOAD_BYTES
    assert decode_event(payload) == EventNote("job-1", 8, "token", None)
    assert decode_event(encode_event(ev("j", 9, "end"))).terminal
    for bad in ("", "[1]", '{"j":"a","i":"1","k":"token"}', '{"j":"a","i":0,"k":"x"}', "{"):
        with pytest.raises(ValueError):
            decode_event(bad)


async def test_notify_reaches_the_callbacks_of_every_listener(buses: Callable[..., PgBus]) -> None:
    a, b = buses(name="a"), buses(name="b")
    got_a: list[str] = []
    got_b: list[str] = []
    a.on(JOBS_CHANNEL, got_a.append)
    b.on(JOBS_CHANNEL, got_b.append)
    b.on(JOBS_CHANNEL, lambda _p: 1 / 0)  # a failing callback does not stop the others
    await a.start()
    await b.start()
    await a.notify(JOBS_CHANNEL, "job-1")
    await b.notify(JOBS_CHANNEL, "job-2")
    await wait_for(lambda: len(got_a) == 2 and len(got_b) == 2)
    assert got_a == got_b == ["job-1", "job-2"]
    assert b.callback_errors == 2


async def test_a_big_event_is_notified_without_its_data(buses: Callable[..., PgBus]) -> None:
    leader, follower = buses(), buses()
    notes: list[EventNote] = []
    follower.on(EVENTS_CHANNEL, lambda p: notes.append(decode_event(p)))
    await leader.start()
    await follower.start()
    events = [
        ev("job-1", 1, "queued"),
        ev("job-1", 2, "token", '"' + "x" * 9000 + '"'),
        ev("job-1", 3, "end"),
    ]
    assert leader.publish_events(events) == 3
    await leader.flush(timeout_s=5)
    await wait_for(lambda: len(notes) == 3)
    assert [n.event_id for n in notes] == [1, 2, 3]
    assert notes[0].data == events[0].data and notes[2].data == events[2].data
    assert notes[1].data is None and notes[1].kind == "token"


async def test_a_thousand_published_events_arrive_in_order_in_few_round_trips(
    buses: Callable[..., PgBus],
) -> None:
    leader, follower = buses(), buses()
    got: list[tuple[str, int]] = []
    follower.on(
        EVENTS_CHANNEL, lambda p: got.append((decode_event(p).job_id, decode_event(p).event_id))
    )
    await leader.start()
    await follower.start()
    sent = [ev(f"job-{j}", i, "token") for i in range(1, 101) for j in range(10)]
    for k in range(0, 1000, 50):  # the relay publishes batch after batch, never waiting
        leader.publish_events(sent[k : k + 50])
    await leader.flush(timeout_s=10)
    await wait_for(lambda: len(got) == 1000, timeout=10)
    assert got == [(e.job_id, e.event_id) for e in sent]
    assert leader.sent == 1000 and leader.dropped == 0
    assert leader.batches <= 20  # one statement per drain, not one per event


async def test_a_full_queue_drops_and_counts_but_keeps_terminal_events(
    buses: Callable[..., PgBus],
) -> None:
    leader, follower = buses(max_pending=10), buses()
    got: list[int] = []
    follower.on(EVENTS_CHANNEL, lambda p: got.append(decode_event(p).event_id))
    await leader.start()
    await follower.start()
    events = [ev("job-1", i, "token") for i in range(1, 100)] + [ev("job-1", 100, "end")]
    assert leader.publish_events(events) == 11  # no await: the drainer has not run yet
    assert leader.dropped == 89
    await leader.flush(timeout_s=5)
    await wait_for(lambda: len(got) == 11)
    assert got == [*range(1, 11), 100]


async def test_the_bus_reconnects_and_resyncs_after_its_connections_are_killed(
    buses: Callable[..., PgBus], postgres_dsn: str
) -> None:
    leader, follower = buses(name="leader"), buses(name="follower", ping_s=0.5)
    got: list[str] = []
    resyncs: list[int] = []
    follower.on(JOBS_CHANNEL, got.append)
    follower.on_resync(lambda: resyncs.append(1))
    await leader.start()
    await follower.start()
    await leader.notify(JOBS_CHANNEL, "before")
    await wait_for(lambda: got == ["before"])
    assert await kill_backends(postgres_dsn, "orchestratord-bus-listen follower") == 1
    await wait_for(lambda: resyncs == [1] and follower.connected)
    assert follower.reconnects == 1
    # the sender's connection dies too: notify() retries once on a fresh one
    assert await kill_backends(postgres_dsn, "orchestratord-bus-notify leader") == 1
    await leader.notify(JOBS_CHANNEL, "after")
    # and queued events are sent again on a fresh connection
    assert await kill_backends(postgres_dsn, "orchestratord-bus-notify leader") == 1
    notes: list[int] = []
    follower_events = buses(name="f2")
    follower_events.on(EVENTS_CHANNEL, lambda p: notes.append(decode_event(p).event_id))
    await follower_events.start()
    leader.publish_events([ev("job-1", 1, "queued"), ev("job-1", 2, "end")])
    await leader.flush(timeout_s=10)
    await wait_for(lambda: got == ["before", "after"] and notes == [1, 2])


# -- RemoteStreams ---------------------------------------------------------------------------


@dataclass
class Leader:
    """Publishes a job's events like the daemon's EventWriter: lifecycle events committed
    then notified, deferred ones notified only, stored with the terminal event."""

    store: PostgresStore
    bus: PgBus
    drop: Callable[[StoredEvent], bool] = lambda _e: False
    notified: list[StoredEvent] = field(default_factory=list)

    def publish(self, events: Sequence[StoredEvent]) -> None:
        kept = [e for e in events if not self.drop(e)]
        self.notified.extend(kept)
        self.bus.publish_events(kept)

    async def run(self, events: list[StoredEvent], *, token_pause: float = 0.0) -> None:
        job_id = events[0].job_id
        await self.store.commit(jobs=[row(job_id)], events=events[:1], durable=False)
        self.publish(events[:1])
        for e in events[1:3]:
            await self.store.commit(events=[e], durable=False)
            self.publish([e])
        for k in range(3, len(events) - 1, 7):  # deferred: notified in batches
            self.publish(events[k : min(k + 7, len(events) - 1)])
            await asyncio.sleep(token_pause)
        await self.store.commit(events=events[3:], durable=False)
        self.publish(events[-1:])


async def collect(remote: RemoteStreams, job_id: str, last_id: int = 0) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async for batch in remote.follow_batches(job_id, last_id, idle_s=0.05):
        if batch is not None:
            out.extend(batch)
    return out


@pytest.fixture
async def follower(postgres_dsn: str, store: PostgresStore) -> AsyncIterator[RemoteStreams]:
    fstore = PostgresStore(postgres_dsn)  # the follower's own store connections
    await fstore.open()
    bus = PgBus(postgres_dsn, name="follower", ping_s=0.5)
    remote = RemoteStreams(fstore, sweep_s=0.05, poll_idle_s=0.3)
    remote.attach(bus)
    await bus.start()
    remote.start()
    yield remote
    await remote.close()
    await bus.close()
    await fstore.close()


async def test_a_follower_client_sees_every_event_once_in_order(
    store: PostgresStore, buses: Callable[..., PgBus], follower: RemoteStreams
) -> None:
    leader = Leader(store, buses(name="leader"))
    await leader.bus.start()
    events = job_events("job-1", 200)
    await store.commit(jobs=[row("job-1")], events=events[:1], durable=True)
    early = asyncio.create_task(collect(follower, "job-1"))  # before anything else
    await asyncio.sleep(0.05)
    runner = asyncio.create_task(leader_rest(leader, events))
    await wait_for(lambda: len(leader.notified) >= 60)
    late = asyncio.create_task(collect(follower, "job-1", 40))  # resumes mid-way
    await runner
    assert await asyncio.wait_for(early, 5) == events
    assert await asyncio.wait_for(late, 5) == events[40:]
    # live: the deferred events came from the notifications, not from the final read
    assert follower.fills <= 10
    await wait_for(lambda: follower.followed() == [])


async def leader_rest(leader: Leader, events: list[StoredEvent]) -> None:
    """``Leader.run`` after ``queued`` (already committed): notify it, then the rest."""
    leader.publish(events[:1])
    for e in events[1:3]:
        await leader.store.commit(events=[e], durable=False)
        leader.publish([e])
    for k in range(3, len(events) - 1, 7):
        leader.publish(events[k : min(k + 7, len(events) - 1)])
        await asyncio.sleep(0.002)
    await leader.store.commit(events=events[3:], durable=True)
    leader.publish(events[-1:])


async def test_dropped_notifications_end_with_exactly_the_stored_sequence(
    store: PostgresStore, buses: Callable[..., PgBus], follower: RemoteStreams
) -> None:
    rng = random.Random(7)
    leader = Leader(store, buses(name="leader"), drop=lambda _e: rng.random() < 0.2)
    await leader.bus.start()
    events = job_events("job-1", 150, big=frozenset({2, 50}))
    clients = [asyncio.create_task(collect(follower, "job-1", k)) for k in (0, 0, 3)]
    await asyncio.sleep(0.05)
    await leader.run(events, token_pause=0.002)
    assert len(leader.notified) < len(events)  # some were dropped
    got = await asyncio.wait_for(asyncio.gather(*clients), 5)
    assert got == [events, events, events[3:]]
    assert await store.events_after("job-1", 0) == events


async def test_a_lost_terminal_notification_is_found_by_polling(
    store: PostgresStore, buses: Callable[..., PgBus], follower: RemoteStreams
) -> None:
    leader = Leader(store, buses(name="leader"), drop=lambda e: e.terminal)
    await leader.bus.start()
    events = job_events("job-1", 5)
    client = asyncio.create_task(collect(follower, "job-1"))
    await asyncio.sleep(0.05)
    await leader.run(events)
    assert await asyncio.wait_for(client, 5) == events


async def test_events_lost_with_the_leader_end_with_the_gapped_terminal_event(
    store: PostgresStore, buses: Callable[..., PgBus], follower: RemoteStreams
) -> None:
    leader = Leader(store, buses(name="leader"))
    await leader.bus.start()
    events = job_events("job-1", 10)[:-1]  # the leader dies before the end
    client = asyncio.create_task(collect(follower, "job-1"))
    resumed = asyncio.create_task(collect(follower, "job-1", 8))
    await asyncio.sleep(0.05)
    await store.commit(jobs=[row("job-1")], events=events[:3], durable=False)
    leader.publish(events)
    await wait_for(
        lambda: (s := follower._jobs.get("job-1")) is not None and s.stream.last_id == 13
    )
    # the new leader's recovery: the terminal event numbered past any id a client holds
    terminal = ev("job-1", 3 + LOST_GAP, "error")
    await store.commit(events=[terminal], durable=False)
    leader.publish([terminal])
    assert await asyncio.wait_for(client, 5) == [*events, terminal]
    assert await asyncio.wait_for(resumed, 5) == [*events[8:], terminal]
    # a follower arriving after the end serves what the store has
    assert await collect(follower, "job-1") == [*events[:3], terminal]


async def test_a_stream_opened_mid_job_uses_recent_notifications(
    store: PostgresStore, buses: Callable[..., PgBus], follower: RemoteStreams
) -> None:
    leader = Leader(store, buses(name="leader"))
    await leader.bus.start()
    events = job_events("job-1", 30)
    await store.commit(jobs=[row("job-1")], events=events[:3], durable=False)
    leader.publish(events[:20])  # deferred 4..20 notified, not stored; nobody follows yet
    await leader.bus.flush(timeout_s=5)
    await asyncio.sleep(0.1)
    stream = await follower.stream("job-1")
    assert stream.last_id == 20  # not stuck at 3 until the end
    leader.publish(events[20:-1])
    await store.commit(events=events[3:], durable=False)
    leader.publish(events[-1:])
    assert await asyncio.wait_for(collect(follower, "job-1", 20), 5) == events[20:]


# -- a property: any drop pattern and delivery delays -------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, list[int | None], list[bool], int, int]:
    n = draw(st.integers(0, 12))
    total = 4 + n
    # per event: delivered d steps after it was notified (None: dropped)
    delays = draw(st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=total, max_size=total))
    big = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    join = draw(st.integers(0, total))
    last = draw(st.integers(0, join))
    return n, delays, big, join, last


_counter = iter(range(1_000_000))


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=schedules())
async def test_property_any_drops_and_delays_end_with_the_stored_sequence(
    store: PostgresStore, schedule: tuple[int, list[int | None], list[bool], int, int]
) -> None:
    """Notes fed straight to RemoteStreams (no bus): dropped or delayed by a few steps
    (never before their commit), some without data; a client joins at step ``join``
    with ``Last-Event-ID`` ≤ what was published then; it ends with exactly the store."""
    n, delays, big, join, last = schedule
    job_id = f"job-p{next(_counter)}"
    events = job_events(job_id, n)
    remote = RemoteStreams(store, sweep_s=0.02, poll_idle_s=0.1)
    remote.start()
    try:
        inbox: dict[int, list[EventNote]] = {}
        client: asyncio.Task[list[StoredEvent]] | None = None
        steps = len(events) + 6
        for step in range(steps):
            if step < len(events):
                e = events[step]
                if step < 3:
                    await store.commit(
                        jobs=[row(job_id)] if step == 0 else (), events=[e], durable=False
                    )
                elif e.terminal:
                    await store.commit(events=events[3:], durable=False)
                d = delays[step]
                if d is not None:
                    note = EventNote(job_id, e.event_id, e.kind, None if big[step] else e.data)
                    inbox.setdefault(step + d, []).append(note)
            if step == join:
                client = asyncio.create_task(collect(remote, job_id, last))
                await asyncio.sleep(0)
            for note in inbox.pop(step, []):
                remote.on_note(note)
            await asyncio.sleep(0)
        assert client is not None
        assert await asyncio.wait_for(client, 5) == events[last:]
    finally:
        await remote.close()
