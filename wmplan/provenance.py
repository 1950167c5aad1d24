"""Where a result came from: code version, package versions, machine and precision.

Every ``results.json`` records this, so a number can be traced to the commit (and whether the
tree had uncommitted changes), the library versions and the hardware that produced it.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from wmplan.hardware import cpu_name

PACKAGES = ("wmplan", "torch", "numpy", "gymnasium", "mujoco", "pymunk", "lightning", "diffusers", "transformers")


def git_state(folder: Path = Path(__file__).resolve().parent) -> dict[str, Any] | None:
    """{commit, dirty} of the git checkout holding ``folder``; None for an installed package."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(precision: str | None = None) -> dict[str, Any]:
    """The record written into results: git state, versions, CPU/GPU and the precision used."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "git": git_state(),
        "versions": package_versions(),
        "machine": {"cpu": cpu_name(), "gpu": gpu, "platform": platform.platform()},
        "precision": precision,
    }
