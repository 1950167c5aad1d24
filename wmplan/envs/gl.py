"""MuJoCo's offscreen GL backend, chosen by platform (torch-free: env modules import it first)."""

from __future__ import annotations

import os
import platform


def mujoco_gl_backend(system: str | None = None) -> str:
    """MuJoCo's offscreen GL backend for this platform: EGL on Linux (headless, no display
    needed), CGL on macOS, GLFW on Windows (the backends MuJoCo accepts on each)."""
    system = system or platform.system()
    return {"Darwin": "cgl", "Windows": "glfw"}.get(system, "egl")


def configure_mujoco_gl(environ: dict | None = None, system: str | None = None) -> str:
    """Set ``MUJOCO_GL`` for this platform unless the user already chose one; returns it.

    Must run before ``mujoco`` is imported: MuJoCo reads the variable once, at import.
    """
    environ = os.environ if environ is None else environ
    return environ.setdefault("MUJOCO_GL", mujoco_gl_backend(system))
