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
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
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
            # Its own generator: measuring (first run on a machine only) must not move the global RNG,
            # or that run's reward head would start from other weights than every later run's.
            a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0)).to(dtype)
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


def _measure_matmul_peak(device: str, dtype_name: str) -> float:
    """FLOP/s of the fastest of a few square matmuls (best of 3 timings each) on `device`."""
    import torch

    dtype = getattr(torch, dtype_name)
    sizes = (1024, 1536) if device == "cpu" else (4096, 8192)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    generator = torch.Generator(device=device).manual_seed(0)  # the global RNG stays where the run's seed put it
    for n in sizes:
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)
        a @ b  # warm-up: kernel selection
        reps = max(1, int((1e10 if device == "cpu" else 2e13) / (2 * n**3)))
        for _ in range(3):
            sync()
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync()
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


_PEAKS: dict[tuple[str, str, int], float] = {}


def matmul_peak_flops(device: str = "cpu", dtype_name: str = "float32", fresh: bool = False) -> float:
    """The device's dense matmul peak (FLOP/s) in `dtype_name` (float32 | bfloat16 | float16),
    measured (under a second) once per process, or again with fresh=True: what MFU is measured
    against. Not cached across runs: a figure measured while another job shared the CPU would
    stay wrong."""
    import torch

    key = (device, dtype_name, torch.get_num_threads())
    if key not in _PEAKS or fresh:
        _PEAKS[key] = _measure_matmul_peak(device, dtype_name)
    return _PEAKS[key]


def best_precision(accelerator: str) -> str:
    """`precision: auto`: bf16 autocast on GPUs that have it (fp16 on older ones); on CPU, bf16
    autocast only where this CPU's bf16 matmul beats fp32 (measured once, cached)."""
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_bf16_speedup() > 1.2 else "32-true"
