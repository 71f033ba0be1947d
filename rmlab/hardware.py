"""Hardware quirks that must be handled before torch runs its first kernel."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
_PROBE = "import torch; a = torch.ones(64, 64, dtype=torch.bfloat16); print(float((a @ a).sum()))"


def cache_root() -> Path:
    """Where rmlab caches per-machine artefacts (RMLAB_CACHE, else ~/.cache/rmlab)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rmlab"
    return Path(os.environ.get("RMLAB_CACHE") or default)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _cached(name: str, measure):
    """A per-machine measurement, computed once and kept in the rmlab cache."""
    key = hashlib.sha1(f"{sorted(_cpu_flags())}{platform.release()}{sys.executable}".encode()).hexdigest()[:16]
    path = cache_root() / f"cpu-{name}-{key}.json"
    try:
        return json.loads(path.read_text())["value"]
    except (OSError, ValueError, KeyError):
        value = measure()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"value": value}))
        return value


def cpu_bf16_speedup() -> float:
    """How much faster a bf16 matmul is than fp32 on this CPU (measured once, cached).

    Depends on the chip: ~4x on CPUs with native bf16 dot products, below 1x on some that only
    emulate it. `precision: auto` picks bf16 autocast on CPU only where it pays.
    """

    def measure() -> float:
        import torch

        def seconds(dtype: torch.dtype) -> float:
            a = torch.randn(1024, 1024).to(dtype)
            a @ a  # warm-up: kernel selection
            start = time.perf_counter()
            for _ in range(5):
                a @ a
            return time.perf_counter() - start

        return round(seconds(torch.float32) / seconds(torch.bfloat16), 2)

    return _cached("bf16-speedup", measure)


def guard_cpu_bf16() -> None:
    """Cap oneDNN below AMX where the CPU advertises AMX but the VM faults on it.

    Seen on cloud VMs: /proc/cpuinfo lists amx_tile, oneDNN's bf16 matmul uses it, and the
    process dies with SIGILL and no traceback. A tiny bf16 matmul is probed once per machine in a
    subprocess (result cached); if it dies, ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 is set for this
    process and its children. A value the user set is never changed.
    """
    if "ONEDNN_MAX_CPU_ISA" in os.environ or "amx_tile" not in _cpu_flags():
        return

    def probe() -> bool:
        return subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=300).returncode == 0

    amx_works = _cached("amx-works", probe)
    if not amx_works:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"
        log.info("This CPU advertises AMX but faults on it; bf16 matmuls are capped at AVX512_CORE_BF16.")
