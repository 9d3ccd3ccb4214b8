"""A follower never sleeps through an event: the stall of issue 12.

A follower that hands an event to a slow consumer (the ``yield`` suspends it) must not miss
events published meanwhile — in particular the terminal one — and must not wait for the
keep-alive timer to see them."""

from __future__ import annotations

import asyncio

from orchestratord.store import StoredEvent
from orchestratord.streams import JobStream


def ev(i: int, kind: str = "token") -> StoredEvent:
    return StoredEvent("j", i, kind, "{}")


async def _consume(s: JobStream, received: list[int]) -> None:
    async for e in s.follow(0, idle_s=15.0):  # the daemon's keep-alive interval
        if e is None:
            continue
        received.append(e.event_id)
        await asyncio.sleep(0)  # the consumer writes the event to its socket


async def test_events_published_while_followers_yield_reach_them_at_once() -> None:
    s = JobStream("j", [ev(1, "queued")])
    received: list[list[int]] = [[] for _ in range(50)]
    followers = [asyncio.create_task(_consume(s, r)) for r in received]
    await asyncio.sleep(0)  # every follower is now handing event 1 to its consumer
    s.publish(ev(2))  # published while they are between their check and their wait
    await asyncio.sleep(0)
    s.publish(ev(3, "end"))
    _done, pending = await asyncio.wait(followers, timeout=1.0)
    for task in pending:
        task.cancel()
    assert not pending, f"{len(pending)} of 50 followers slept through the events"
    assert all(r == [1, 2, 3] for r in received)


async def test_a_terminal_published_during_the_last_yield_is_still_delivered() -> None:
    s = JobStream("j", [ev(1, "queued"), ev(2)])
    received: list[int] = []

    async def consume() -> None:
        async for e in s.follow(0, idle_s=15.0):
            if e is None:
                continue
            received.append(e.event_id)
            if e.event_id == 2:
                s.publish(ev(3, "error"))  # arrives while this follower holds event 2

    await asyncio.wait_for(consume(), timeout=1.0)
    assert received == [1, 2, 3]


async def test_an_event_published_right_after_a_follower_starts_waiting_wakes_it() -> None:
    for steps in range(8):  # publish at every point of the followers' way to their wait
        s = JobStream("j", [ev(1, "queued")])
        received: list[list[int]] = [[] for _ in range(10)]
        followers = [asyncio.create_task(_consume(s, r)) for r in received]
        for _ in range(steps):
            await asyncio.sleep(0)
        s.publish(ev(2, "end"))  # the very next thing on the loop
        _done, pending = await asyncio.wait(followers, timeout=1.0)
        for task in pending:
            task.cancel()
        assert not pending, "a follower missed the wake-up and waits for the keep-alive"
        assert all(r == [1, 2] for r in received)
