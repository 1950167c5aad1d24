"""PointMaze: the D4RL maze2d point mass on the ``mujoco`` bindings, seen from above.

A ball with two slide joints is pushed by two motors (gear 100) through a maze of box
walls; MuJoCo timestep 0.01, 5 physics steps per env step, velocity clipped to +-5
after every env step (D4RL ``maze2d``). Layouts are D4RL's U-maze, medium and large.

Coordinates: grid cell ``(i, j)`` (row ``i`` of the layout string, column ``j``) is the
unit square centred on world ``(x, y) = (i, j)``, and qpos is the ball's world xy.
(D4RL draws the ball 0.2 off its qpos; here qpos and the picture agree.) The fixed
orthographic camera shows the layout as it is written: rows go down, columns right.

Besides the env, this module holds the maze tools used by the scripted data policy:
``maze_grid``, ``cell_of``, ``shortest_path`` and ``PointMazeEnv.waypoint_action``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from wmplan.envs.gl import configure_mujoco_gl

configure_mujoco_gl()  # offscreen rendering backend by platform; must precede the import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from wmplan.envs.mujoco_env import MujocoGoalEnv  # noqa: E402

# D4RL maze2d layouts: '#' wall, 'O' free ('G', D4RL's fixed goal, counts as free).
MAZES: dict[str, str] = {
    "umaze": "#####\n#GOO#\n###O#\n#OOO#\n#####",
    "medium": "########\n#OO##OO#\n#OO#OOO#\n##OOO###\n#OO#OOO#\n#O#OO#O#\n#OOO#OG#\n########",
    "large": (
        "############\n#OOOO#OOOOO#\n#O##O#O#O#O#\n#OOOOOO#OOO#\n#O####O###O#\n"
        "#OO#O#OOOOO#\n##O#O#O#O###\n#OO#OOO#OGO#\n############"
    ),
}
FRAME_SKIP = 5
MAX_SPEED = 5.0
SUCCESS_DISTANCE = 0.5
CELL_JITTER = 0.1  # D4RL's uniform noise around a cell centre when sampling positions
BALL_RADIUS = 0.1

_FLOOR_RGBA = "0.15 0.2 0.35 1"
_WALL_RGBA = "0.85 0.7 0.45 1"
_BALL_RGBA = "0.9 0.15 0.15 1"


def maze_grid(maze: str) -> np.ndarray:
    """Free-cell grid of a named layout: bool ``[rows, cols]``, True where free."""
    if maze not in MAZES:
        raise ValueError(f"unknown maze {maze!r}; known: {sorted(MAZES)}")
    return np.array([[c != "#" for c in row] for row in MAZES[maze].split("\n")])


def cell_of(xy: np.ndarray) -> tuple[int, int]:
    """Grid cell ``(i, j)`` containing world position ``xy`` (cells are centred on integers)."""
    i, j = np.floor(np.asarray(xy, dtype=np.float64)[:2] + 0.5).astype(int)
    return int(i), int(j)


def shortest_path(
    grid: np.ndarray, start: tuple[int, int], goal: tuple[int, int]
) -> list[tuple[int, int]]:
    """Shortest 4-connected path of free cells (BFS) from ``start`` to ``goal``, both included."""
    for name, cell in (("start", start), ("goal", goal)):
        if not _is_free(grid, cell):
            raise ValueError(f"{name} cell {cell} is not a free cell of the maze")
    parent: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (cell[0] + di, cell[1] + dj)
            if nxt not in parent and _is_free(grid, nxt):
                parent[nxt] = cell
                queue.append(nxt)
    if goal not in parent:
        raise ValueError(f"no path from {start} to {goal}")
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    return path[::-1]


def cell_distances(grid: np.ndarray, goal: tuple[int, int]) -> np.ndarray:
    """Steps from every free cell to ``goal`` along 4-connected free cells (BFS): int
    ``[rows, cols]``, -1 where a cell is a wall or cannot reach the goal."""
    steps = np.full(grid.shape, -1, dtype=np.int64)
    steps[goal] = 0
    queue = deque([goal])
    while queue:
        cell = queue.popleft()
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (cell[0] + di, cell[1] + dj)
            if _is_free(grid, nxt) and steps[nxt] < 0:
                steps[nxt] = steps[cell] + 1
                queue.append(nxt)
    return steps


def _is_free(grid: np.ndarray, cell: tuple[int, int]) -> bool:
    i, j = cell
    return 0 <= i < grid.shape[0] and 0 <= j < grid.shape[1] and bool(grid[i, j])


def _wall_rectangles(grid: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Cover the wall cells with few rectangles ``(i0, j0, i1, j1)`` (inclusive corners).

    Rendering cost grows with the number of geoms (each is a draw call), so adjacent wall
    cells share one box: greedily grow right, then down, from each uncovered wall cell.
    """
    todo = ~grid
    rects = []
    for i0, j0 in np.argwhere(~grid):
        if not todo[i0, j0]:
            continue
        j1 = j0
        while j1 + 1 < grid.shape[1] and todo[i0, j1 + 1]:
            j1 += 1
        i1 = i0
        while i1 + 1 < grid.shape[0] and todo[i1 + 1, j0 : j1 + 1].all():
            i1 += 1
        todo[i0 : i1 + 1, j0 : j1 + 1] = False
        rects.append((int(i0), int(j0), int(i1), int(j1)))
    return rects


def _maze_xml(grid: np.ndarray) -> str:
    """MJCF of the maze: D4RL's ball and motors, walls as boxes, a flat-lit top-down camera."""
    rows, cols = grid.shape
    walls = "\n".join(
        f'<geom type="box" pos="{(i0 + i1) / 2} {(j0 + j1) / 2} 0" '
        f'size="{(i1 - i0 + 1) / 2} {(j1 - j0 + 1) / 2} 0.2" rgba="{_WALL_RGBA}"/>'
        for i0, j0, i1, j1 in _wall_rectangles(grid)
    )
    # Orthographic: fovy is the visible height in metres, so the whole maze just fits.
    return f"""
<mujoco model="pointmaze">
  <compiler inertiafromgeom="true"/>
  <!-- Warm starts would make the contact solve depend on hidden solver history;
       without them (qpos, qvel) is the complete state. -->
  <option timestep="0.01" gravity="0 0 0" iterations="20" integrator="Euler">
    <flag warmstart="disable"/>
  </option>
  <visual>
    <headlight ambient="0.6 0.6 0.6" diffuse="0.4 0.4 0.4" specular="0 0 0"/>
    <quality shadowsize="0"/>
    <global offwidth="1024" offheight="1024"/>
  </visual>
  <default>
    <joint damping="1" limited="false"/>
    <geom friction=".5 .1 .1" density="1000" margin="0.002" condim="1" contype="2" conaffinity="1"/>
  </default>
  <worldbody>
    <!-- A box, not a plane: MuJoCo draws planes as a fine grid, which is slow to render. -->
    <geom name="floor" type="box" size="{rows} {cols} 0.1" rgba="{_FLOOR_RGBA}"
          pos="{(rows - 1) / 2} {(cols - 1) / 2} -0.3" contype="0" conaffinity="0"/>
    <camera name="top" mode="fixed" projection="orthographic" fovy="{max(rows, cols)}"
            pos="{(rows - 1) / 2} {(cols - 1) / 2} 5" xyaxes="0 1 0 -1 0 0"/>
    <body name="ball">
      <joint name="ball_x" type="slide" axis="1 0 0"/>
      <joint name="ball_y" type="slide" axis="0 1 0"/>
      <!-- The collision sphere is hidden (group 3); a larger marker (as D4RL's site) is drawn
           instead so the ball spans a few pixels even at 64 px in the large maze. -->
      <geom name="ball" type="sphere" size="{BALL_RADIUS}" contype="1" group="3"/>
      <site name="marker" type="sphere" size="0.2" pos="0 0 0.25" rgba="{_BALL_RGBA}"/>
    </body>
    {walls}
  </worldbody>
  <actuator>
    <motor joint="ball_x" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
    <motor joint="ball_y" ctrlrange="-1 1" ctrllimited="true" gear="100"/>
  </actuator>
</mujoco>"""


class PointMazeEnv(MujocoGoalEnv):
    """D4RL maze2d point mass with pixel observations. State and proprio: (x, y, vx, vy)."""

    state_dim = 4
    proprio_dim = 4

    def __init__(
        self, maze: str = "umaze", resolution: int = 64, render_mode: str | None = "rgb_array"
    ):
        super().__init__(resolution=resolution, render_mode=render_mode)
        self.maze = maze
        self.grid = maze_grid(maze)
        self.free_cells = np.argwhere(self.grid)  # [N, 2] cell indices, row-major order
        self._steps_to: dict[tuple[int, int], np.ndarray] = {}  # goal cell -> cell_distances
        self.model = mujoco.MjModel.from_xml_string(_maze_xml(self.grid))
        self.data = mujoco.MjData(self.model)
        res = self.resolution
        self.observation_space = spaces.Dict(
            pixels=spaces.Box(0, 255, (res, res, 3), np.uint8),
            proprio=spaces.Box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    # -- goal API -------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        s = self._check_state(state)
        self.data.qpos[:] = s[:2]
        self.data.qvel[:] = s[2:]
        mujoco.mj_forward(self.model, self.data)

    def sample_start_and_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Start and goal at rest, in two distinct free cells, jittered inside their cells."""
        cells = self.free_cells[rng.choice(len(self.free_cells), size=2, replace=False)]
        xy = cells + rng.uniform(-CELL_JITTER, CELL_JITTER, size=(2, 2))
        return np.concatenate([xy[0], [0.0, 0.0]]), np.concatenate([xy[1], [0.0, 0.0]])

    def evaluate(self, state: np.ndarray, goal_state: np.ndarray) -> dict[str, Any]:
        """Success when the ball's xy is within 0.5 of the goal's xy."""
        s, g = self._check_state(state), self._check_state(goal_state)
        distance = float(np.linalg.norm(s[:2] - g[:2]))
        return {"success": distance < SUCCESS_DISTANCE, "distance": distance}

    def planning_cost(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        """The true-simulator oracle's cost (``EnvDistance``): the distance through the maze.

        In the goal's cell, the straight distance; elsewhere, the straight distance to the
        centre of the next cell on a shortest path, plus one per cell step from there to the
        goal's cell, plus the goal's offset from its cell centre. The straight distance
        (``evaluate``) traps plans behind walls: with it the oracle (horizon 10, CEM 64x5)
        planned 4 of 50 Large-maze episodes into dead ends, 0.92 at 100 and at 150 env steps.
        """
        s, g = self._check_state(state)[:2], self._check_state(goal_state)[:2]
        goal_cell = cell_of(g)
        cell = self._nearest_free_cell(s)
        if cell == goal_cell or not _is_free(self.grid, goal_cell):
            return float(np.linalg.norm(s - g))
        steps = self._cell_steps(goal_cell)
        if steps[cell] < 0:  # walled off from the goal: unreachable, so farther than any path
            return float(np.linalg.norm(s - g) + steps.size)
        nxt = min(((cell[0] + di, cell[1] + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))),
                  key=lambda c: steps[c] if _is_free(self.grid, c) and steps[c] >= 0 else steps.size)
        return float(np.linalg.norm(s - np.asarray(nxt)) + steps[nxt] + np.linalg.norm(g - np.asarray(goal_cell)))

    def _cell_steps(self, goal_cell: tuple[int, int]) -> np.ndarray:
        if goal_cell not in self._steps_to:  # one BFS per goal cell, reused by every candidate
            self._steps_to[goal_cell] = cell_distances(self.grid, goal_cell)
        return self._steps_to[goal_cell]

    def _nearest_free_cell(self, xy: np.ndarray) -> tuple[int, int]:
        """The cell of ``xy``, or the nearest free cell when the ball overlaps a wall cell."""
        cell = cell_of(xy)
        if _is_free(self.grid, cell):
            return cell
        nearest = self.free_cells[np.argmin(np.linalg.norm(self.free_cells - xy, axis=1))]
        return int(nearest[0]), int(nearest[1])

    # -- hooks ----------------------------------------------------------------------
    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        np.clip(self.data.qvel, -MAX_SPEED, MAX_SPEED, out=self.data.qvel)
        # mj_step leaves body poses one substep behind qpos; refresh them for rendering.
        mujoco.mj_forward(self.model, self.data)

    def _proprio(self) -> np.ndarray:
        return self.get_state().astype(np.float32)

    # -- scripted control -----------------------------------------------------------
    def waypoint_action(
        self, state: np.ndarray, target_xy: np.ndarray, kp: float = 10.0, kd: float = 1.0
    ) -> np.ndarray:
        """PD action [2] toward the next cell centre on the shortest path to ``target_xy``.

        In the target's own cell it steers at ``target_xy`` itself. ``kp``/``kd`` are the
        position and velocity gains; the result is clipped into the action box.
        """
        s = self._check_state(state)
        target = np.asarray(target_xy, dtype=np.float64)
        if target.shape != (2,) or not np.all(np.isfinite(target)):
            raise ValueError(f"target_xy must be a finite xy pair, got {target_xy!r}")
        path = shortest_path(self.grid, cell_of(s[:2]), cell_of(target))
        waypoint = target if len(path) == 1 else np.asarray(path[1], dtype=np.float64)
        action = kp * (waypoint - s[:2]) - kd * s[2:]
        return np.clip(action, -1.0, 1.0).astype(np.float32)
