"""Rope and Granular: DINO-WM's FleX pushing tasks re-implemented on MuJoCo.

Both share one scene: a square table with low rim walls (inner half-width 0.3 m), a
fixed orthographic camera looking straight down at it, and a vertical capsule pusher
driven kinematically through three slide joints. On the table lies either a rope (a
chain of capsules that bends in the table plane) or a loose pile of small spheres.

Action ``[x0, y0, x1, y1]`` in [-1, 1] is one push in table coordinates (times 0.25 m):
the lifted pusher moves above ``(x0, y0)``, lowers to the table, slides in a straight
line to ``(x1, y1)`` at 0.5 m/s, lifts again and waits until the scene is still (every
object dof slower than 2 mm/s or 2 mrad/s, at most 0.2 s). Lifted, it touches nothing,
so there it jumps instead of moving.

Speed (``scripts/bench_envs.py``, 64 px, one env on one core of a busy AMD EPYC): Rope
~120 and Granular ~80 pushes/s, up from ~9 and ~7 with 4 ms steps, a fixed 0.2 s
settle, ball-jointed capsules and free spheres. The levers: 10 ms steps (``TIMESTEP``);
the jumps and the settling above; bodies with only the dofs and contacts that show (rope
segments bend about z only and touch the table with one sphere each, grains translate
without rotating); MuJoCo's sleeping, which skips the grains at rest until something
touches them; the solver settings in ``_scene_xml``; coarser sphere meshes.

State is ``qpos ++ qvel`` of the whole model. MuJoCo keeps two kinds of hidden state:
warm starts, which are off, and sleep (which bodies sleep, and for how long the awake
ones have been still). Every push, reset and ``set_state`` therefore starts from a reset
simulator given just (qpos, qvel), every body awake, so ``simulate`` from a stored state
replays ``step`` exactly. Proprio is the pusher's xy in action units. Success compares
particle centres (rope segment centres or sphere centres, xyz) by Chamfer distance, in
metres.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from wmplan.envs.gl import configure_mujoco_gl

configure_mujoco_gl()  # offscreen rendering backend by platform; must precede the import

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from wmplan.envs.mujoco_env import MujocoGoalEnv  # noqa: E402
from wmplan.envs.chamfer import chamfer_distance  # noqa: E402

TABLE_HALF = 0.3  # inner half-width of the walled table and of the camera's view (m)
WORKSPACE = 0.25  # action 1.0 is this far from the table centre (m)
OBJECT_BOUND = 0.2  # sampled start and goal particle centres stay within +-this (m)
MAX_SHIFT = 0.12  # goal translation per axis, like DINO-WM's U(-1, 1) for its FleX scale
# 10 ms: the pusher moves 5 mm a step, less than a grain's radius, and contacts keep the
# default 0.02 s time constant (MuJoCo softens any below two steps).
TIMESTEP = 0.01
# m/s, also the lowering speed. Faster pushes fling the objects further after the pusher
# stops (0.75 m/s moves them ~15% further), so the speed stays as it was.
PUSH_SPEED = 0.5
PUSHER_RADIUS = 0.015
PUSH_Z = PUSHER_RADIUS + 0.003  # lower-cap centre height while pushing: 3 mm above the table
LIFT_Z = 0.05  # lower-cap centre height when lifted: clear of the rope (0.024 m high)
# After each push the scene settles until every object dof is slower than SETTLE_SPEED
# (m/s or rad/s), at most SETTLE_STEPS steps (0.2 s, the old fixed settling time). A miss
# then costs no settling at all. 2 mm/s rather than 1 cm/s: grains squeezed half a
# millimetre into the table by a push rise back slower than 1 cm/s. The test reads the
# state only, so replays stay exact.
SETTLE_STEPS = 20
SETTLE_SPEED = 0.002
RESET_SETTLE_STEPS = 40  # physics steps (0.4 s) that let sampled starts and goals come to rest
SUCCESS_THRESHOLD = 0.02  # Chamfer distance (m): about one segment diameter in total
# Pose features (a pose probe's targets) sample the particles on a POSE_GRID x POSE_GRID grid of
# cells over the table (3.75 cm). On 440 Granular states (random pushes from 40 start/goal
# pairs) the grid Chamfer of ``pose_cost`` follows the true Chamfer distance with Pearson
# 0.999, and ranks the states of one goal with Spearman 0.98 (0.90 on an 8 x 8 grid).
POSE_GRID = 16

_TABLE_RGBA = "0.92 0.9 0.84 1"
_WALL_RGBA = "0.55 0.55 0.55 1"
_PUSHER_RGBA = "0.1 0.55 0.15 1"


def _scene_xml(objects: str, solver: str) -> str:
    """MJCF of the table, walls, camera and pusher around an ``objects`` body fragment."""
    walls = "\n".join(
        f'<geom type="box" pos="{x} {y} 0.02" size="{sx} {sy} 0.02" rgba="{_WALL_RGBA}"/>'
        for x, y, sx, sy in (
            (TABLE_HALF + 0.02, 0, 0.02, TABLE_HALF + 0.04),
            (-TABLE_HALF - 0.02, 0, 0.02, TABLE_HALF + 0.04),
            (0, TABLE_HALF + 0.02, TABLE_HALF + 0.04, 0.02),
            (0, -TABLE_HALF - 0.02, TABLE_HALF + 0.04, 0.02),
        )
    )
    # The pusher's lower cap sits 3 mm above the table while pushing, so it touches
    # objects from the side only; its round cap shoves aside what it is lowered onto.
    half_length = 0.03
    return f"""
<mujoco model="table_push">
  <compiler angle="radian" autolimits="true"/>
  <!-- Warm starts are off: the solver's history would be hidden state, and they saved
       no iterations here. Sleeping bodies (still for 10 steps at under 1 mm/s) are
       skipped until something awake touches them: a grain asleep on the table moves no
       differently, and every push starts with all awake (see _load). Euler integrates
       joint damping implicitly, all the implicit integration the light, strongly damped
       rope links and grains need, and costs less than implicitfast. The collision
       midphase (bounding-box trees) pays off only for bodies of many colliding geoms;
       here each has one. A tolerance of 1e-6 (default 1e-8) saves a fifth of CG's
       iterations on the grains; the forces it leaves unresolved move nothing visibly. -->
  <option timestep="{TIMESTEP}" integrator="Euler" cone="elliptic" solver="{solver}"
          tolerance="1e-6">
    <flag warmstart="disable" midphase="disable" sleep="enable"/>
  </option>
  <visual>
    <headlight ambient="0.7 0.7 0.7" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
    <!-- No shadows and coarse sphere meshes: objects span a few pixels, and software
         rendering cost grows with the triangle count (8 x 4 instead of 12 x 6 slices
         renders Granular in 60% of the time; at 64 px a grain is then indistinguishable). -->
    <quality shadowsize="0" numslices="8" numstacks="4"/>
    <global offwidth="1024" offheight="1024"/>
  </visual>
  <default>
    <!-- Rolling friction (condim 6, set on the rope) stops a rope shoved at push speed
         from rolling away like a log; grains cannot rotate and need only condim 3. -->
    <geom friction="0.6 0.005 0.005" condim="3" density="1000"/>
    <joint armature="1e-5"/>
  </default>
  <worldbody>
    <geom name="table" type="plane" size="{TABLE_HALF + 0.04} {TABLE_HALF + 0.04} 0.01"
          rgba="{_TABLE_RGBA}"/>
    {walls}
    <camera name="top" mode="fixed" projection="orthographic" fovy="{2 * TABLE_HALF}"
            pos="0 0 1" xyaxes="1 0 0 0 1 0"/>
    <body name="pusher" pos="0 0 {half_length}" gravcomp="1">
      <joint name="pusher_x" type="slide" axis="1 0 0"/>
      <joint name="pusher_y" type="slide" axis="0 1 0"/>
      <joint name="pusher_z" type="slide" axis="0 0 1"/>
      <!-- Heavy, so contacts barely disturb the commanded motion between resets. -->
      <geom type="capsule" size="{PUSHER_RADIUS} {half_length}" mass="10" rgba="{_PUSHER_RGBA}"/>
    </body>
    {objects}
  </worldbody>
</mujoco>"""


def _quat_z(angle: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] (w, x, y, z) of rotations by ``angle`` about the z axis."""
    angle = np.asarray(angle, dtype=np.float64)
    return np.stack([np.cos(angle / 2), 0 * angle, 0 * angle, np.sin(angle / 2)], axis=-1)


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions [..., 4] (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _shift_on_table(xy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A translation [2] of U(-MAX_SHIFT, MAX_SHIFT) per axis, slid back so that every
    point of ``xy [N, 2]`` stays within +-OBJECT_BOUND."""
    low, high = -OBJECT_BOUND - xy.min(axis=0), OBJECT_BOUND - xy.max(axis=0)
    if np.any(low > high):
        raise ValueError(f"object spans {np.ptp(xy, axis=0)} m, wider than the table allows")
    return np.clip(rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2), low, high)


def _cell_centres(grid: int, half: float) -> np.ndarray:
    """Centres [grid] of ``grid`` equal cells spanning [-half, half] along one axis."""
    return (np.arange(grid) + 0.5) / grid * 2 * half - half


def _bilinear_occupancy(points: np.ndarray, grid: int, half: float) -> np.ndarray:
    """Shares [M, grid * grid] (row-major, rows y) of the points [M, N, 2] in the cells of the
    square [-half, half]^2, each point spread over its four nearest cell centres; rows sum to 1.
    Spreading, not counting, keeps the features continuous in the points' positions."""
    M, N, _ = points.shape
    u = np.clip((points + half) / (2 * half) * grid - 0.5, 0, grid - 1)  # [M, N, 2] in cell units
    low = np.minimum(np.floor(u).astype(int), grid - 2)
    frac = u - low
    occupancy = np.zeros((M, grid * grid))
    rows = np.repeat(np.arange(M), N)
    for dx in (0, 1):
        for dy in (0, 1):
            weight = np.where(dx, frac[..., 0], 1 - frac[..., 0]) * np.where(dy, frac[..., 1], 1 - frac[..., 1])
            cell = (low[..., 1] + dy) * grid + low[..., 0] + dx
            np.add.at(occupancy, (rows, cell.ravel()), weight.ravel() / N)
    return occupancy


def _nearest_distance_field(points: np.ndarray, grid: int, half: float, block: int = 256) -> np.ndarray:
    """Distances [M, grid * grid] from each cell centre (row-major, rows y) of the square
    [-half, half]^2 to the nearest of the points [M, N, 2]."""
    c = _cell_centres(grid, half)
    cx, cy = np.meshgrid(c, c, indexing="xy")
    centres = np.stack([cx.ravel(), cy.ravel()], axis=-1)  # [G*G, 2]
    out = np.empty((len(points), grid * grid))
    for i in range(0, len(points), block):  # [block, G*G, N] squared distances at a time, as
        p = points[i : i + block]  # |c|^2 + |p|^2 - 2 c.p: a matrix product, 4x faster than differences
        square = (centres**2).sum(-1)[None, :, None] + (p**2).sum(-1)[:, None] - 2 * centres @ p.transpose(0, 2, 1)
        out[i : i + block] = np.sqrt(np.maximum(square.min(-1), 0))
    return out


def _line(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Waypoints [n, 3] from ``a`` (excluded) to ``b`` (included), PUSH_SPEED apart per step."""
    n = max(1, int(np.ceil(np.linalg.norm(b - a) / (PUSH_SPEED * TIMESTEP))))
    return a + (b - a) * (np.arange(1, n + 1) / n)[:, None]


class TablePushEnv(MujocoGoalEnv):
    """Shared table, pusher, state, rendering and Chamfer evaluation of Rope and Granular.

    Subclasses give the objects' MJCF (``_objects_xml``; particle geoms named ``p0``,
    ``p1``, ...; each object's root joint a free joint or x, y, z slides whose ``ref`` is
    the body's position, so that qpos is world xyz), the constraint ``solver``, a start
    configuration (``_start_qpos``) and the goal transform (``_goal_qpos``); both are
    placed in the simulator and left to settle.
    """

    proprio_dim = 2
    num_particles: int
    solver: str

    def __init__(
        self,
        resolution: int = 64,
        render_mode: str | None = "rgb_array",
        success_threshold: float = SUCCESS_THRESHOLD,
    ):
        super().__init__(resolution=resolution, render_mode=render_mode)
        if not (np.isfinite(success_threshold) and success_threshold > 0):
            raise ValueError(
                f"success_threshold must be a positive distance in metres, got {success_threshold}"
            )
        self.success_threshold = float(success_threshold)
        self.model = mujoco.MjModel.from_xml_string(_scene_xml(self._objects_xml(), self.solver))
        self.data = mujoco.MjData(self.model)
        self._scratch = mujoco.MjData(self.model)  # kinematics of states other than the current one
        names = [f"p{i}" for i in range(self.num_particles)]
        self._particle_geoms = np.array([self.model.geom(name).id for name in names])
        pusher_x = self.model.joint("pusher_x")
        self._pusher_qpos = slice(pusher_x.qposadr[0], pusher_x.qposadr[0] + 3)
        self._pusher_dof = slice(pusher_x.dofadr[0], pusher_x.dofadr[0] + 3)
        self._object_dofs = np.delete(np.arange(self.model.nv), self._pusher_dof)
        self._nq = self.model.nq
        self._root_xy, self._root_quat = self._root_qpos()
        res = self.resolution
        self.observation_space = spaces.Dict(
            pixels=spaces.Box(0, 255, (res, res, 3), np.uint8),
            proprio=spaces.Box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)

    # -- subclasses -----------------------------------------------------------------
    @abstractmethod
    def _objects_xml(self) -> str:
        """MJCF bodies of the pushed objects; particle geoms are named p0..p{N-1}."""

    @abstractmethod
    def _start_qpos(self, rng: np.random.Generator) -> np.ndarray:
        """A start configuration: full qpos [nq] with the objects resting on the table."""

    @abstractmethod
    def _goal_qpos(self, start_qpos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The goal configuration made from a settled start's qpos [nq]."""

    # -- goal API -------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        s = self._check_state(state)
        self._load(s[: self._nq], s[self._nq :])
        mujoco.mj_forward(self.model, self.data)

    def particle_positions(self, state: np.ndarray) -> np.ndarray:
        """World xyz ``[num_particles, 3]`` of the particle centres in ``state``."""
        self._scratch.qpos[:] = self._check_state(state)[: self._nq]
        mujoco.mj_kinematics(self.model, self._scratch)
        return self._scratch.geom_xpos[self._particle_geoms].copy()

    def sample_start_and_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A settled start and the settled goal made from it (see the subclass)."""
        start = self._settle(self._start_qpos(rng))
        goal = self._settle(self._goal_qpos(start[: self._nq], rng))
        return start, goal

    def evaluate(self, state: np.ndarray, goal_state: np.ndarray) -> dict[str, Any]:
        """Chamfer distance (m) between particle centres; success below ``success_threshold``."""
        points, goal_points = self.particle_positions(state), self.particle_positions(goal_state)
        distance = chamfer_distance(points, goal_points)
        return {"success": distance < self.success_threshold, "distance": distance}

    # -- pose probe ---------------------------------------------------------------------
    # One scale per grid: a rarely occupied cell scaled by its own tiny std would turn its rare
    # grains into huge targets (a third of the squared normalised occupancy came from values
    # beyond 5 std on Granular) and the probe's loss would chase them.
    pose_groups = (POSE_GRID**2, POSE_GRID**2)

    def pose_features(self, states: np.ndarray) -> np.ndarray:
        """States ``[..., state_dim]`` -> ``[..., 2 G^2]`` (G = POSE_GRID) float64: the particles'
        occupancy of the table's G x G cells (bilinear shares of the particles' xy, summing to 1),
        then each cell centre's distance (m) to the nearest particle. Rows are y, columns x."""
        s = np.asarray(states, dtype=np.float64)
        if s.shape[-1] != self.state_dim:
            raise ValueError(f"{type(self).__name__} states must be [..., {self.state_dim}], got {s.shape}")
        flat = s.reshape(-1, self.state_dim)
        points = np.stack([self.particle_positions(x)[:, :2] for x in flat])  # [M, N, 2]
        occupancy = _bilinear_occupancy(points, POSE_GRID, TABLE_HALF)  # [M, G*G]
        distance = _nearest_distance_field(points, POSE_GRID, TABLE_HALF)  # [M, G*G]
        return np.concatenate([occupancy, distance], axis=-1).reshape(*s.shape[:-1], -1)

    def pose_cost(self, features, goal):
        """Chamfer distance on the grid (m), of pose features (numpy or torch, broadcasting):
        ``sum(occupancy * goal distance field) + sum(goal occupancy * distance field)``, each
        particle's share weighted by its cell's distance to the other set, as Chamfer's two
        means are. A probe's occupancy may be negative or not sum to 1, so it is clipped at 0
        and renormalised; its distance field, clipped at 0."""
        cells = POSE_GRID * POSE_GRID
        for name, f in (("pose features", features), ("goal pose features", goal)):
            if f.shape[-1] != 2 * cells:
                raise ValueError(f"{name} must be [..., {2 * cells}], got {tuple(f.shape)}")

        def split(f):
            occupancy, distance = f[..., :cells].clip(min=0), f[..., cells:].clip(min=0)
            return occupancy / (occupancy.sum(-1)[..., None] + 1e-9), distance

        (occupancy, distance), (goal_occupancy, goal_distance) = split(features), split(goal)
        return (occupancy * goal_distance).sum(-1) + (goal_occupancy * distance).sum(-1)

    # -- hooks ----------------------------------------------------------------------
    def _apply_action(self, action: np.ndarray) -> None:
        if np.array_equal(action[:2], action[2:]):  # a zero-length push moves nothing: no push at all
            return
        self._load(self.data.qpos.copy(), self.data.qvel.copy())  # wakes what fell asleep
        start, end = action[:2] * WORKSPACE, action[2:] * WORKSPACE
        above, down = np.array([*start, LIFT_Z]), np.array([*start, PUSH_Z])
        # Lifted, the pusher touches nothing, so it jumps there, and back up after the push.
        self._park(above)
        self._drive(np.concatenate([_line(above, down), _line(down, np.array([*end, PUSH_Z]))]))
        self._park(np.array([*end, LIFT_Z]))
        self._settle_until_still()
        mujoco.mj_forward(self.model, self.data)  # positions of the final state, for rendering

    def _proprio(self) -> np.ndarray:
        return (self.data.qpos[self._pusher_qpos][:2] / WORKSPACE).astype(np.float32)

    # -- physics ----------------------------------------------------------------------
    def _drive(self, path: np.ndarray) -> None:
        """Step the physics once per pusher waypoint of ``path [T, 3]``.

        The pusher is kinematic: before each step its velocity is set to reach the next
        waypoint, and after it its position is snapped there, so contacts cannot deflect it.
        """
        start = self.data.qpos[None, self._pusher_qpos]
        velocities = np.diff(path, axis=0, prepend=start) / TIMESTEP
        for waypoint, velocity in zip(path, velocities):
            self.data.qvel[self._pusher_dof] = velocity
            mujoco.mj_step(self.model, self.data)
            self.data.qpos[self._pusher_qpos] = waypoint
            self.data.qvel[self._pusher_dof] = velocity

    def _load(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """Reset the simulator and give it ``qpos`` and ``qvel``: every body awake, with no
        sleep history, so what follows depends on (qpos, qvel) alone."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel

    def _park(self, position: np.ndarray) -> None:
        """Put the pusher at ``position`` (xyz), at rest."""
        self.data.qpos[self._pusher_qpos] = position
        self.data.qvel[self._pusher_dof] = 0.0

    def _settle_until_still(self) -> None:
        """Step until every object dof is slower than SETTLE_SPEED, at most SETTLE_STEPS times."""
        for _ in range(SETTLE_STEPS):
            if np.abs(self.data.qvel[self._object_dofs]).max() < SETTLE_SPEED:
                return
            mujoco.mj_step(self.model, self.data)

    def _settle(self, qpos: np.ndarray) -> np.ndarray:
        """State after placing ``qpos`` at rest, pusher parked lifted, and settling."""
        self._load(qpos, np.zeros(self.model.nv))
        self._park(np.array([WORKSPACE, WORKSPACE, LIFT_Z]))
        for _ in range(RESET_SETTLE_STEPS):
            mujoco.mj_step(self.model, self.data)
        return self.get_state()

    def _root_qpos(self) -> tuple[np.ndarray, np.ndarray]:
        """qpos indices of every object root's world xy [n_roots, 2] and of the free roots'
        orientation quaternions [n_free, 4]."""
        m = self.model
        objects = m.jnt_bodyid != m.body("pusher").id
        free = m.jnt_qposadr[objects & (m.jnt_type == mujoco.mjtJoint.mjJNT_FREE)]
        slide_x = objects & (m.jnt_type == mujoco.mjtJoint.mjJNT_SLIDE) & (m.jnt_axis[:, 0] == 1)
        # A free joint's qpos starts with xyz; an x slide is followed by its body's y slide.
        roots = np.concatenate([free, m.jnt_qposadr[slide_x]])
        return roots[:, None] + np.arange(2), free[:, None] + 3 + np.arange(4)

    def _transform(
        self, qpos: np.ndarray, angle: float, scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """``qpos`` with the objects rotated by ``angle`` about z and scaled by ``scale`` about
        their particles' xy centroid, then shifted by ``_shift_on_table``.

        Every object root gets the same map, so a rope moves rigidly (its bending joints
        are relative) and a pile of grains scales about its centre.
        """
        self._scratch.qpos[:] = qpos
        mujoco.mj_kinematics(self.model, self._scratch)
        xy = self._scratch.geom_xpos[self._particle_geoms, :2]
        pivot, linear = xy.mean(axis=0), scale * _rotation_z(angle)
        shift = _shift_on_table((xy - pivot) @ linear.T + pivot, rng)
        out = qpos.copy()
        out[self._root_xy] = (qpos[self._root_xy] - pivot) @ linear.T + pivot + shift
        out[self._root_quat] = _quat_mul(_quat_z(angle), qpos[self._root_quat])
        return out


ROPE_SEGMENTS = 24
SEGMENT_LENGTH = 0.016  # m, so the rope is 0.384 m long
ROPE_RADIUS = 0.012
# N m s / rad at each bending joint: the rope bends smoothly under a push, then stays put
# (no spring, so nothing creeps back). This also stands in for the bending resistance the
# older capsule rope got from its overlapping next-but-one neighbours.
ROPE_DAMPING = 0.02
ROPE_MAX_BEND = np.pi / 2  # total turning angle of a start rope's arc is U(-this, this)
_ROPE_RGBA = "0.85 0.2 0.1 1"


class RopeEnv(TablePushEnv):
    """A rope of 24 capsules linked by damped hinges that bend it in the table plane.

    The capsules are drawn only; each segment collides as a sphere of the rope's radius
    at its centre (one table contact instead of a capsule's two, and no permanent
    contacts between overlapping neighbours). The free root is the middle segment, which
    halves the longest chain the solver propagates through.

    Start: an arc of U(-90, 90) deg total bend at a random pose. Goal: the start rotated
    by U(0, 90) deg about its centroid and shifted (DINO-WM's rope protocol).
    """

    num_particles = ROPE_SEGMENTS
    solver = "Newton"
    # free root (7 qpos, 6 dofs) + a hinge per further segment (1, 1) + pusher (3, 3)
    state_dim = (7 + (ROPE_SEGMENTS - 1) + 3) + (6 + (ROPE_SEGMENTS - 1) + 3)

    def _objects_xml(self) -> str:
        def segment(i: int, x0: float, x1: float) -> str:
            return (
                f'<geom type="capsule" fromto="{x0} 0 0 {x1} 0 0" size="{ROPE_RADIUS}" '
                f'contype="0" conaffinity="0" rgba="{_ROPE_RGBA}"/>'
                f'<geom name="p{i}" type="sphere" pos="{(x0 + x1) / 2} 0 0" size="{ROPE_RADIUS}" '
                f'condim="6" density="0" group="3"/>'  # group 3: not rendered
            )

        def chain(indices: range, step: float) -> str:
            """Segments ``indices`` outwards from the root, ``step`` (m) along x apart."""
            xml = ""  # built from the free end inwards: each segment is its parent's child body
            for k, i in reversed(list(enumerate(indices))):
                xml = (
                    f'<body pos="{step / 2 if k == 0 else step} 0 0">'
                    f'<joint type="hinge" axis="0 0 1" damping="{ROPE_DAMPING}"/>'
                    f"{segment(i, 0, step)}{xml}</body>"
                )
            return xml

        root, half = ROPE_SEGMENTS // 2, SEGMENT_LENGTH / 2
        forward = chain(range(root + 1, ROPE_SEGMENTS), SEGMENT_LENGTH)
        backward = chain(range(root - 1, -1, -1), -SEGMENT_LENGTH)
        # A straight rope is centred on the origin: the root segment spans [0, SEGMENT_LENGTH].
        return (
            f'<body pos="{half} 0 {ROPE_RADIUS}"><freejoint/>'
            f"{segment(root, -half, half)}{forward}{backward}</body>"
        )

    def _start_qpos(self, rng: np.random.Generator) -> np.ndarray:
        qpos = self.model.qpos0.copy()
        bend = rng.uniform(-ROPE_MAX_BEND, ROPE_MAX_BEND) / (ROPE_SEGMENTS - 1)
        hinges = np.flatnonzero(self.model.jnt_type == mujoco.mjtJoint.mjJNT_HINGE)
        # Going towards p0 a hinge turns the other way for the same arc.
        towards_end = np.sign(self.model.body_pos[self.model.jnt_bodyid[hinges], 0])
        qpos[self.model.jnt_qposadr[hinges]] = towards_end * bend
        return self._transform(qpos, rng.uniform(0, 2 * np.pi), 1.0, rng)

    def _goal_qpos(self, start_qpos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._transform(start_qpos, rng.uniform(0, np.pi / 2), 1.0, rng)


NUM_GRAINS = 120
GRAIN_RADIUS = 0.0075
GOAL_SCALE = (0.6, 0.9)  # DINO-WM's granular goal: the pile scaled by U(0.6, 0.9)
# Start grains are this far apart at least, so even the 0.6-scaled goal has no overlaps.
GRAIN_SPACING = 2 * GRAIN_RADIUS / GOAL_SCALE[0] * 1.02
# N s / m on each grain slide: with table friction, shoved grains slide to a halt like
# sand. Grains have no rotational dofs at all, so they cannot roll across the table.
GRAIN_DAMPING = 0.02
_GRAIN_RGBA = "0.05 0.15 0.75 1"


class GranularEnv(TablePushEnv):
    """A loose pile of 120 small spheres, each free to translate (three slides) but not
    to rotate.

    Start: a jittered hexagonal patch of random elliptic outline, orientation and place.
    Goal: the start pile scaled by U(0.6, 0.9) about its centroid and shifted (DINO-WM's
    granular protocol).
    """

    num_particles = NUM_GRAINS
    solver = "CG"
    state_dim = (3 * NUM_GRAINS + 3) + (3 * NUM_GRAINS + 3)  # grain slides + pusher

    def _objects_xml(self) -> str:
        # Compile-time positions only need to be apart; every reset places the grains.
        # Each slide's ref is its body's coordinate, so the grain's qpos is its world xyz.
        cols = int(np.ceil(np.sqrt(NUM_GRAINS)))
        row, col = np.divmod(np.arange(NUM_GRAINS), cols)
        x, y = 0.03 * (col - cols / 2), 0.03 * (row - cols / 2)

        def grain(i: int) -> str:
            pos = (x[i], y[i], GRAIN_RADIUS)
            slides = "".join(
                f'<joint type="slide" axis="{axis}" ref="{ref}" damping="{GRAIN_DAMPING}"/>'
                for axis, ref in zip(("1 0 0", "0 1 0", "0 0 1"), pos)
            )
            sphere = f'<geom name="p{i}" type="sphere" size="{GRAIN_RADIUS}" rgba="{_GRAIN_RGBA}"/>'
            return f'<body pos="{pos[0]} {pos[1]} {pos[2]}">{slides}{sphere}</body>'

        return "\n".join(grain(i) for i in range(NUM_GRAINS))

    def _start_qpos(self, rng: np.random.Generator) -> np.ndarray:
        lattice = 1.1 * GRAIN_SPACING  # the slack left for jitter keeps grains GRAIN_SPACING apart
        n = int(np.ceil(np.sqrt(NUM_GRAINS))) + 4
        i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
        points = lattice * np.stack([i + 0.5 * j, j * np.sqrt(3) / 2], axis=-1).reshape(-1, 2)
        # The grains nearest the centre under an elliptic metric form the pile;
        # _transform below turns it to a random orientation.
        aspect = np.array([1.0, rng.uniform(0.6, 1.0)])
        points = points[np.argsort(np.linalg.norm(points / aspect, axis=1))[:NUM_GRAINS]]
        radius = (lattice - GRAIN_SPACING) / 2 * np.sqrt(rng.uniform(size=NUM_GRAINS))
        angle = rng.uniform(0, 2 * np.pi, size=NUM_GRAINS)
        points += radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        qpos = self.model.qpos0.copy()
        qpos[self._root_xy] = points
        qpos[self._root_xy[:, 0] + 2] = GRAIN_RADIUS  # each grain's z slide follows its y slide
        return self._transform(qpos, rng.uniform(0, 2 * np.pi), 1.0, rng)

    def _goal_qpos(self, start_qpos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._transform(start_qpos, 0.0, rng.uniform(*GOAL_SCALE), rng)
