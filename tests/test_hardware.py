"""wmplan.hardware and wmplan.envs.gl: precision resolution, device choice, MuJoCo's GL backend."""

from __future__ import annotations

import pytest
import torch

import wmplan.hardware as hardware
from wmplan.envs.gl import configure_mujoco_gl, mujoco_gl_backend


@pytest.fixture
def probe(monkeypatch):
    """Stub the matmul probe: set ``probe.speedup`` to what bf16_speedup should measure."""

    class Probe:
        speedup = 1.0
        calls = 0

    def fake(device_type="cpu", size=256):
        Probe.calls += 1
        return Probe.speedup

    monkeypatch.setattr(hardware, "bf16_speedup", fake)
    monkeypatch.delenv(hardware.AUTO_PRECISION_ENV, raising=False)  # no choice inherited from earlier tests
    return Probe


@pytest.mark.parametrize("speedup,expected", [(4.5, "bf16"), (2.2, "bf16"), (1.0, "fp32"), (0.007, "fp32")])
def test_auto_follows_the_probe(probe, speedup, expected):
    probe.speedup = speedup
    assert hardware.resolve_precision("auto", "cpu") == expected
    assert hardware.lightning_precision("auto", "cpu") == {"bf16": "bf16-mixed", "fp32": "32-true"}[expected]


def test_explicit_choice_wins_and_skips_the_probe(probe):
    probe.speedup = 0.001
    for given, expected in (("bf16", "bf16"), ("fp32", "fp32"), ("bf16-mixed", "bf16"), ("32-true", "fp32"), ("32", "fp32")):
        assert hardware.resolve_precision(given, "cpu") == expected
    assert probe.calls == 0


@pytest.mark.parametrize("bad", ["fp16", "16-mixed", "", "BF16", None])
def test_bad_precision_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="precision"):
        hardware.resolve_precision(bad)


def test_cuda_uses_its_bf16_support(monkeypatch, probe):
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert hardware.resolve_precision("auto", "cuda") == expected
    assert probe.calls == 0


def test_real_probe_is_cached_and_positive():
    hardware.bf16_speedup.cache_clear()
    first = hardware.bf16_speedup("cpu", 64)
    assert first > 0 and hardware.bf16_speedup("cpu", 64) == first
    assert hardware.bf16_speedup.cache_info().hits >= 1


def test_autocast_matches_the_resolved_precision(probe):
    probe.speedup = 3.0
    with hardware.autocast("auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with hardware.autocast("fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_default_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert hardware.default_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert hardware.default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.default_device() == "cuda"


@pytest.mark.parametrize("system,backend", [("Linux", "egl"), ("Darwin", "cgl"), ("Windows", "glfw")])
def test_mujoco_gl_by_platform(system, backend):
    assert mujoco_gl_backend(system) == backend
    environ = {}
    assert configure_mujoco_gl(environ, system) == backend and environ["MUJOCO_GL"] == backend
    chosen = {"MUJOCO_GL": "osmesa"}  # the user's choice wins
    assert configure_mujoco_gl(chosen, system) == "osmesa" and chosen["MUJOCO_GL"] == "osmesa"


def test_cpu_name_names_the_machine():
    name = hardware.cpu_name()
    assert "cores" in name and len(name) > 8


def test_allocator_tuning_applies_on_glibc_once():
    import platform
    import sys

    applied = hardware.tune_cpu_allocator()
    assert applied == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert hardware.tune_cpu_allocator() == applied and hardware.tune_cpu_allocator.cache_info().hits >= 1
    assert (torch.ones(512, 512) @ torch.ones(512, 512)).sum().item() == 512**3  # memory still works


def test_matmul_peak_is_positive():
    assert hardware.matmul_peak(torch.float32, sizes=(64,), seconds=0.01) > 0


def test_child_processes_inherit_the_auto_choice(probe, monkeypatch):
    """DDP ranks launched by this process reuse its choice instead of timing again."""
    probe.speedup = 3.0
    assert hardware.resolve_precision("auto", "cpu") == "bf16"
    assert hardware.os.environ[hardware.AUTO_PRECISION_ENV] == "cpu:bf16"
    probe.speedup = 1.0  # a borderline second timing would disagree
    assert hardware.resolve_precision("auto", "cpu") == "bf16" and probe.calls == 1
    monkeypatch.setenv(hardware.AUTO_PRECISION_ENV, "cpu:fp32")
    assert hardware.resolve_precision("auto", "cpu") == "fp32" and probe.calls == 1
