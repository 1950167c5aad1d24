"""The one place that locates wmplan's Hydra config tree (``wmplan/configs/``).

The configs ship inside the package (as package data), so an editable install, a wheel
and a source checkout all find them the same way, through ``importlib.resources``.
Hydra needs a real directory given as an absolute string: use ``str(CONFIG_DIR)``.

This module imports neither torch nor Hydra, so cheap modules (``wmplan.envs.config``)
may use it.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

__all__ = ["CONFIG_DIR", "config_path"]


def _locate() -> Path:
    root = resources.files("wmplan") / "configs"
    if isinstance(root, Path):  # an ordinary install or checkout: the files are on disk
        path = root
    else:  # e.g. imported from a zip: extract once, for the life of the process
        stack = ExitStack()
        atexit.register(stack.close)
        path = Path(stack.enter_context(resources.as_file(root)))
    path = path.resolve()
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(f"wmplan's config directory {path} has no train.yaml; is the package installed with its data?")
    return path


CONFIG_DIR: Path = _locate()
"""Absolute path of ``wmplan/configs`` (groups: env, latent, model, diffusion, sampler, ...)."""


def config_path(*parts: str) -> Path:
    """A path inside the config tree, e.g. ``config_path("env", "wall.yaml")``."""
    return CONFIG_DIR.joinpath(*parts)
