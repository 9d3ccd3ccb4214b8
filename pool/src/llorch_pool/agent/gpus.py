"""GPU discovery: ``nvidia-smi --query-gpu`` when present, configured capacities otherwise."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass

__all__ = ["NVIDIA_SMI_ARGS", "DetectedGpu", "parse_nvidia_smi", "query_nvidia_smi"]

log = logging.getLogger("llorch_pool.agent.gpus")

NVIDIA_SMI_ARGS = (
    "--query-gpu=index,name,memory.total,memory.used,utilization.gpu",
    "--format=csv,noheader,nounits",
)
"""Arguments of the ``nvidia-smi`` query (memory in MiB, utilisation in percent)."""

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DetectedGpu:
    """One GPU as ``nvidia-smi`` reports it."""

    index: str
    name: str
    vram_total_bytes: int
    vram_used_bytes: int
    utilization: float | None = None

    @property
    def vram_free_bytes(self) -> int:
        """Measured free VRAM."""
        return max(0, self.vram_total_bytes - self.vram_used_bytes)


def parse_nvidia_smi(text: str) -> list[DetectedGpu]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu
    --format=csv,noheader,nounits`` output. Lines whose memory figures do not parse
    (``[N/A]``) are skipped; a ``[N/A]`` utilisation becomes ``None``."""
    gpus: list[DetectedGpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        # The name may itself contain commas: the index comes first, the numbers last.
        name = ", ".join(parts[1:-3])
        try:
            total, used = (int(float(n) * _MIB) for n in parts[-3:-1])
        except ValueError:
            continue
        try:
            util: float | None = min(1.0, max(0.0, float(parts[-1]) / 100.0))
        except ValueError:
            util = None
        gpus.append(DetectedGpu(parts[0], name or "gpu", total, used, util))
    return gpus


async def query_nvidia_smi(
    executable: str = "nvidia-smi", timeout_s: float = 5.0
) -> list[DetectedGpu] | None:
    """GPUs reported by ``nvidia-smi``; ``None`` when it is absent or fails."""
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            *NVIDIA_SMI_ARGS,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("nvidia-smi could not start: %s", exc)
        return None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("nvidia-smi timed out after %.1fs", timeout_s)
        return None
    if proc.returncode != 0:
        log.warning("nvidia-smi failed (%s): %s", proc.returncode, err.decode(errors="replace"))
        return None
    return parse_nvidia_smi(out.decode(errors="replace"))
