"""Sampling a front door with py-spy while a row runs (``--profile DIR``): where its CPU goes.

``py-spy record --format raw`` writes one line per distinct stack (``frame;frame;... count``);
:func:`summarise` turns that into the share of samples per function, by itself ("self") and
with what it calls ("inclusive"). py-spy comes from PyPI (``pip install py-spy``); it is
looked up in ``benchmarks/.venv-peers`` and then on ``PATH``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from frontdoor.procs import peer_binary

__all__ = ["py_spy", "record", "summarise"]


def py_spy() -> str | None:
    """The py-spy executable, if any."""
    found = peer_binary("py-spy")
    return str(found) if found else shutil.which("py-spy")


@contextlib.contextmanager
def record(pid: int, out: Path, *, rate: int = 100) -> Iterator[None]:
    """Sample ``pid`` (GIL holders only, so waiting does not count) into ``out`` while the
    block runs."""
    exe = py_spy()
    if exe is None:
        print("    (no py-spy: pip install py-spy into benchmarks/.venv-peers to profile)")
        yield
        return
    argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--nonblocking"]
    argv += ["--format", "raw", "--output", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarise(raw: Path, *, top: int = 12) -> list[str]:
    """Lines naming the functions with the most samples in ``raw`` (self, then inclusive)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError), raw.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                incl[frame] += n
    if not total:
        return ["    (no samples)"]
    lines = [f"    {total} samples holding the GIL; self:"]
    lines += [f"      {v / total * 100:5.1f}%  {k[:110]}" for k, v in own.most_common(top)]
    lines.append("    inclusive (the daemon's own code):")
    ours = [
        (k, v) for k, v in incl.most_common() if "orchestratord/" in k or "orchestrator_core/" in k
    ]
    lines += [f"      {v / total * 100:5.1f}%  {k[:110]}" for k, v in ours[: top * 2]]
    return lines
