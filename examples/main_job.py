"""The main job on the embedded defaults.

Until the daemon and a pool are wired together this walks through the library itself:
configuration, request validation, the priority queue with promotion and back-pressure,
and the pool registry's view of heartbeats — printing what an operator would see.
"""

from __future__ import annotations

from orchestrator_core import (
    InMemoryJobQueue,
    InMemoryPoolRegistry,
    Job,
    OrchestratorConfig,
    PoolHeartbeat,
    PoolRegistration,
    QueueFull,
    RequestInvalid,
    TaskSubmitRequest,
)


class Clock:
    """A manual clock so the walk-through is repeatable."""

    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def main() -> None:
    cfg = OrchestratorConfig()
    clock = Clock()
    print(
        f"config: mode={cfg.mode} listen={cfg.server.host}:{cfg.server.port} "
        f"queue.capacity={cfg.queue.capacity} policy={cfg.scheduler.policy}"
    )

    try:
        TaskSubmitRequest(model="llama3-8b", prompt="hi", max_tokens=16, temperature=3.0)
    except RequestInvalid as err:
        print(f"rejected request -> {err.code} (HTTP {err.http_status}): {err.message}")

    queue = InMemoryJobQueue(
        capacity=4,
        full_policy="drop-oldest-batch",
        promote_after_s=cfg.queue.promote_after_s,
        clock=clock,
    )
    for n, priority in enumerate(["batch", "interactive", "batch", "interactive", "interactive"]):
        req = TaskSubmitRequest(
            model="llama3-8b", prompt=f"job {n}", max_tokens=16, priority=priority
        )  # type: ignore[arg-type]
        job = Job.from_request(req, now=clock())
        try:
            result = queue.enqueue(job)
        except QueueFull as err:
            print(f"submit {priority:<11} -> {err.code}")
            continue
        dropped = (
            f" (dropped {result.dropped.job_id[:12]}: {result.dropped.error_code})"
            if result.dropped
            else ""
        )
        print(f"submit {priority:<11} -> {job.job_id[:12]} position {result.position}{dropped}")
        clock.t += 1
    print("dispatch order:", [f"{j.priority}:{j.job_id[:12]}" for j in queue])

    registry = InMemoryPoolRegistry(clock=clock)
    registry.register(PoolRegistration(pool_id="gpu-box-1", endpoint="http://127.0.0.1:9100"))
    for silence in (0, 30, 60):
        clock.t += silence
        print(
            f"after {silence:>2}s of silence pool gpu-box-1 is {registry.get('gpu-box-1').status}"
        )
    registry.heartbeat("gpu-box-1", PoolHeartbeat(sent_at=clock()))
    print(f"after a heartbeat pool gpu-box-1 is {registry.get('gpu-box-1').status}")


if __name__ == "__main__":
    main()
