"""Worker clients may yield ``tokens {i, t: [...]}`` (the tokens of one read) instead of as
many ``token {i, t}`` events: tests that read a client directly flatten them first."""

from __future__ import annotations

from collections.abc import Iterable

from orchestratord.workers import WorkerEvent


def flatten_tokens(events: Iterable[WorkerEvent]) -> list[WorkerEvent]:
    """``events`` with each ``tokens`` batch spelled out as ``token {i, t}`` events (``i``
    counted on from the batch's first index, else from the tokens seen so far)."""
    out: list[WorkerEvent] = []
    seen = 0
    for event in events:
        if event.kind == "tokens":
            first = event.data.get("i", seen)
            for k, text in enumerate(event.data["t"]):
                out.append(WorkerEvent("token", {"i": first + k, "t": text}))
            seen = first + len(event.data["t"])
        else:
            if event.kind == "token":
                seen = event.data.get("i", seen) + 1
            out.append(event)
    return out
