"""Shared base of the MuJoCo environments: a lazily created top-down renderer."""

from __future__ import annotations

from wmplan.envs.gl import configure_mujoco_gl

configure_mujoco_gl()  # must precede the mujoco import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from wmplan.envs.base import GoalEnv  # noqa: E402


class MujocoGoalEnv(GoalEnv):
    """GoalEnv whose subclass owns ``self.model`` / ``self.data`` and a camera named ``top``.

    The renderer is created on first use (collection workers that never render pay nothing)
    and released in ``close``.
    """

    _renderer: mujoco.Renderer | None = None

    def _render(self) -> np.ndarray:
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.resolution, self.resolution)
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        super().close()
