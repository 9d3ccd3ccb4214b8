"""Run every benchmark in this folder, one after the other, and print their figures.

Each benchmark prints its own figures with a baseline measured in the same run. Pass
``--quick`` to forward it to every benchmark (smaller sizes, for a smoke run).
Run: .venv/bin/python benchmarks/run_all.py [--quick] [name-filter]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    filters = [a for a in sys.argv[1:] if not a.startswith("--")]
    failed: list[str] = []
    for script in sorted(here.glob("bench_*.py")):
        if filters and not any(f in script.stem for f in filters):
            continue
        print(f"\n=== {script.stem} {' '.join(flags)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script), *flags])
        print(f"=== {script.stem}: exit {rc} after {time.perf_counter() - t0:.1f}s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
