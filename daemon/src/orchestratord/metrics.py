"""Prometheus metrics of the daemon (docs/daemon.md, *Metrics*). No job ids as labels, ever.

Each app gets its own :class:`Metrics` with its own registry (no process-wide globals), served
at ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the Prometheus text format."""

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)


class Metrics:
    """Every metric of the daemon, registered in one :class:`CollectorRegistry`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "orchestratord_"
        self.queue_depth = Gauge(p + "queue_depth", "Queued jobs", ["priority"], registry=r)
        self.tasks_enqueued = Counter(
            p + "tasks_enqueued_total", "Jobs admitted", ["priority"], registry=r
        )
        self.tasks_rejected = Counter(
            p + "tasks_rejected_total", "Submissions refused, by code", ["code"], registry=r
        )
        self.tasks_dropped = Counter(
            p + "tasks_dropped_total", "Queued jobs dropped by the full-queue policy", registry=r
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds", "Time from queued to dispatch", buckets=_SLOW, registry=r
        )
        self.scheduling_latency = Histogram(
            p + "scheduling_latency_seconds",
            "Duration of one scheduling pass (policy call included)",
            buckets=_FAST,
            registry=r,
        )
        self.admission_latency = Histogram(
            p + "admission_latency_seconds",
            "Duration of an admission, durable commit included",
            buckets=_FAST,
            registry=r,
        )
        self.dispatch = Counter(
            p + "dispatch_total", "Dispatch attempts by outcome", ["outcome"], registry=r
        )
        self.scheduler_errors = Counter(
            p + "scheduler_errors_total", "Policy calls that failed", ["kind"], registry=r
        )
        self.scheduler_fallbacks = Counter(
            p + "scheduler_fallbacks_total",
            "Policy calls answered by the built-in fallback",
            registry=r,
        )
        self.decisions_dropped = Counter(
            p + "scheduler_decisions_dropped_total",
            "Decisions dropped because they no longer fit reality",
            ["kind"],
            registry=r,
        )
        self.jobs_finished = Counter(
            p + "jobs_finished_total", "Jobs that reached a terminal state", ["outcome"], registry=r
        )
        self.tokens_relayed = Counter(
            p + "tokens_relayed_total", "Token events relayed to clients", registry=r
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds",
            "From submission to the first token relayed",
            buckets=_SLOW,
            registry=r,
        )
        self.pools = Gauge(p + "pools", "Pools by status", ["status"], registry=r)
        self.workers = Gauge(p + "workers", "Workers by status", ["status"], registry=r)
        self.worker_starts = Counter(
            p + "worker_starts_total",
            "Worker starts requested, by outcome",
            ["outcome"],
            registry=r,
        )
        self.worker_evictions = Counter(
            p + "worker_evictions_total", "Workers evicted, by reason", ["reason"], registry=r
        )
        self.retries = Counter(p + "retries_total", "Job retries by reason", ["reason"], registry=r)
        self.sse_clients = Gauge(p + "sse_clients", "Connected SSE clients", registry=r)
        self.leader = Gauge(
            p + "leader",
            "1 while this instance leads (runs the queue), 0 as a follower",
            registry=r,
        )
        self.leader_epoch = Gauge(
            p + "leader_epoch",
            "Epoch of this instance's current or last term (0: none)",
            registry=r,
        )
        for prio in ("interactive", "batch"):
            self.queue_depth.labels(prio).set(0)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
