"""One contender for the leader lease, run as a process by
``tests/daemon/integration/test_leadership_processes.py``:
``python -m tests.support.lease_contender DSN INSTANCE_ID TTL``.

It runs :class:`orchestratord.leadership.PostgresLease`'s loop and, from the moment it is
elected, keeps committing a probe event every 20 ms through a :class:`PostgresStore` with the
fencing token of its term — *without* checking ``is_leader()`` first, like a task that was
already on its way when the process was paused. It stops only when a write is refused
(:class:`FencedOut`). It reports on stdout, one JSON object a line: ``elected`` (epoch),
``lost`` (reason), ``wrote`` (probe number, epoch) and ``fenced`` (epoch).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from orchestratord.leadership import PostgresLease
from orchestratord.postgres_store import Fence, PostgresStore
from orchestratord.store import FencedOut, StoredEvent


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def main(dsn: str, instance_id: str, ttl: float) -> None:
    store = PostgresStore(dsn)
    await store.open()
    term: list[Fence] = []

    def elected(epoch: int) -> None:
        fence = lease.fence()
        if fence is not None:
            term[:] = [fence]
        say("elected", epoch=epoch)

    lease = PostgresLease(
        dsn,
        instance_id=instance_id,
        ttl_s=ttl,
        on_elected=elected,
        on_lost=lambda reason: say("lost", reason=reason),
    )
    lease.start()
    n = 0
    try:
        while True:
            await asyncio.sleep(0.02)
            if not term:
                continue
            fence = term[0]
            n += 1
            try:
                await store.commit(
                    events=[StoredEvent(f"probe-{instance_id}", n, "token", str(fence[2]))],
                    durable=False,
                    fence=fence,
                )
            except FencedOut:
                say("fenced", epoch=fence[2])
                if term and term[0] == fence:
                    term.clear()
            else:
                say("wrote", n=n, epoch=fence[2])
    finally:
        await lease.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
