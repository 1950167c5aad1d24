"""What this machine runs well: the compute precision and the torch device.

bf16 is fast only where the hardware has native bf16 matmuls (CUDA GPUs since Ampere, CPUs
with AMX or AVX512-BF16). Elsewhere torch emulates it: on a 2-core AVX2 EPYC a bf16 matmul
ran at 0.8 GFLOP/s against 100-150 in fp32, and every bf16 default made training ~20x
slower. So ``precision: auto`` measures instead of guessing: on a CPU (or Apple's MPS) a
short matmul probe times both precisions once per process and picks bf16 only where it is
clearly faster.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import sys
import time

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
# Lightning's names for the same choices, accepted wherever a training precision is set.
ALIASES = {"bf16-mixed": "bf16", "32-true": "fp32", "32": "fp32"}
LIGHTNING = {"bf16": "bf16-mixed", "fp32": "32-true"}
BF16_MIN_SPEEDUP = 1.2  # below this, fp32's exactness is worth more than bf16's speed


def check_precision(precision: str) -> str:
    """The canonical name (``auto | bf16 | fp32``) of ``precision``, or a ValueError naming it."""
    name = ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} (or {tuple(ALIASES)}), got {precision!r}")
    return name


AUTO_PRECISION_ENV = "WMPLAN_AUTO_PRECISION"  # "<device type>:<bf16|fp32>", set by the first auto choice


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``bf16`` or ``fp32`` for ``precision`` on ``device``; ``auto`` picks what runs fast there.

    An explicit ``bf16`` or ``fp32`` always wins. ``auto``: CUDA -> bf16 where the GPU supports
    it; CPU and MPS -> bf16 only where ``bf16_speedup`` measures at least ``BF16_MIN_SPEEDUP``.
    """
    name = check_precision(precision)
    if name != "auto":
        return name
    kind = torch.device(device).type
    if kind == "cuda":
        choice, why = ("bf16" if torch.cuda.is_bf16_supported() else "fp32"), "CUDA bf16 support"
    elif os.environ.get(AUTO_PRECISION_ENV, "").startswith(f"{kind}:"):
        # Decided by the parent process: DDP ranks it launches inherit the choice, so a
        # borderline timing can never give two ranks different precisions.
        choice, why = os.environ[AUTO_PRECISION_ENV].split(":", 1)[1], f"inherited from {AUTO_PRECISION_ENV}"
    else:
        ratio = bf16_speedup(kind)
        choice = "bf16" if ratio >= BF16_MIN_SPEEDUP else "fp32"
        why = f"bf16 matmul {ratio:.2f}x fp32 on this {kind}"
        os.environ[AUTO_PRECISION_ENV] = f"{kind}:{choice}"
    log_once(f"precision auto -> {choice} ({why}; {cpu_name()})")
    return choice


@functools.lru_cache(maxsize=None)
def bf16_speedup(device_type: str = "cpu", size: int = 256, max_rounds: int = 10, seconds: float = 0.05) -> float:
    """How many times faster a ``size``-square bf16 matmul runs than fp32 on ``device_type``.

    A few milliseconds, measured once per process. After two untimed warm-ups per precision
    (kernel selection, JIT), rounds time one fp32 and one bf16 matmul back to back, and the
    fastest run of each counts: a preempted run (a busy machine) then hits both precisions alike
    and the minimum discards it. A single timed run per precision was not enough: on an idle
    Zen 5 core the ratio spread from 1.2 to 4.6 over eight processes, and once read 0.03 and
    chose fp32 for a whole sweep. Stops after ``max_rounds``, or after three rounds once
    ``seconds`` have passed or bf16 is over 10x slower (emulated: the answer is settled).
    """
    device = torch.device(device_type)
    a32 = torch.randn(size, size, device=device)
    operands = (a32, a32.to(torch.bfloat16))
    for a in operands * 2:  # warm-up
        a @ a
    synchronize(device)
    fastest = {a.dtype: float("inf") for a in operands}
    start = time.perf_counter()
    for done in range(1, max_rounds + 1):
        for a in operands:
            t = time.perf_counter()
            a @ a
            synchronize(device)
            fastest[a.dtype] = min(fastest[a.dtype], time.perf_counter() - t)
        emulated = fastest[torch.bfloat16] > 10 * fastest[torch.float32]
        if done >= 3 and (emulated or time.perf_counter() - start > seconds):
            break
    return fastest[torch.float32] / fastest[torch.bfloat16]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The autocast context of a resolved precision: bf16 autocast, or a no-op for fp32."""
    kind = torch.device(device).type
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=resolve_precision(precision, kind) == "bf16")


def lightning_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning's ``Trainer(precision=...)`` for ``precision`` on Lightning's ``accelerator``."""
    device = {"auto": default_device(), "gpu": "cuda"}.get(accelerator, accelerator)
    return LIGHTNING[resolve_precision(precision, device)]


def default_device() -> str:
    """``cuda`` if a GPU is usable, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.lru_cache(maxsize=None)
def tune_cpu_allocator() -> bool:
    """Let glibc reuse large freed buffers instead of unmapping them (Linux; a no-op elsewhere).

    By default glibc serves every buffer over its mmap threshold (at most 32 MiB) with fresh
    pages and returns them on free, so each model call pays page faults on every large
    activation again. Raising the mmap and trim thresholds keeps those pages in the heap for
    the next call: a planning rollout (mini Wall model, 300 candidates, 2 cores) went from
    0.98 s to 0.57 s. The process keeps its peak heap instead of returning it to the OS.
    Called once by wmplan's commands; returns whether it applied.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))
    log.info(f"glibc allocator tuned for large tensors: {applied}")
    return applied


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    """The CPU model and the matmul ISA extensions torch can use (for logs and benchmarks)."""
    model = platform.processor() or platform.machine()
    flags = ""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                info = f.read()
            model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
            flags = next(line.split(":", 1)[1] for line in info.splitlines() if line.startswith("flags"))
        except (OSError, StopIteration):
            pass
    isa = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"),
                                   ("AMX-BF16", "amx_bf16")) if flag in flags.split()]
    cores = os.cpu_count()
    return f"{model}, {cores} cores" + (f", {' '.join(isa)}" if isa else "")


@functools.lru_cache(maxsize=None)
def log_once(message: str) -> None:
    log.info(message)


def matmul_peak(dtype: torch.dtype = torch.float32, sizes: tuple[int, ...] = (512, 1024, 2048),
                seconds: float = 0.3, device: str = "cpu") -> float:
    """This machine's matmul GFLOP/s at ``dtype``: the best of square matmuls of ``sizes``,
    each repeated for about ``seconds`` after a warm-up (the denominator of 'fraction of peak')."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        a @ a  # warm-up: kernel selection
        synchronize(torch.device(device))
        start, runs = time.perf_counter(), 0
        while runs < 2 or time.perf_counter() - start < seconds:
            a @ a
            runs += 1
        synchronize(torch.device(device))
        best = max(best, 2 * n**3 * runs / (time.perf_counter() - start) / 1e9)
    return best
