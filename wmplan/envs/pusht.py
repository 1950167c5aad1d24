"""PushT: a round agent pushes a T-shaped block across a table, seen from above (pymunk).

Constants follow DINO-WM's PushT: a 512 x 512 world with walls at 5 and 506, physics at
100 Hz with 10 substeps per 10 Hz env step, a kinematic agent circle (radius 15) driven
by a PD controller (k_p 100, k_v 20) toward ``agent_pos + 100 * action``, and a T block
of two boxes (scale 30, length 4, mass 1, friction 1). Space damping 0 makes the block
quasi-static: it stops as soon as nothing pushes it. Coordinates are pymunk's with y
pointing down, so world ``(x, y)`` is image column, row.

State (float64, 10): agent xy, block xy (the T's body origin, the middle of the bar's top
edge, as DINO-WM), block angle, agent velocity, block velocity, block angular velocity.
The block velocities carry over into the next substep's position update, so they are
part of the state. The block body is rebuilt at the start of every env step, dropping
pymunk's hidden solver state, so the next state is a function of (state, action) alone:
``simulate`` and ``step`` agree exactly. ``planning_cost`` is the success test made into
the cost the true-simulator oracle plans with.

This module also holds ``Pusher``, the scripted noisy controller behind the ``pusher``
data policy (random actions rarely touch the block).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymunk
from gymnasium import spaces
from PIL import Image, ImageDraw

from wmplan.envs.base import GoalEnv

WORLD = 512.0
WALL_LO, WALL_HI = 5.0, 506.0
SIM_HZ, CONTROL_HZ = 100, 10
K_P, K_V = 100.0, 20.0
ACTION_SCALE = 100.0  # px per unit of relative action
AGENT_RADIUS = 15.0
T_SCALE, T_LENGTH = 30.0, 4.0
BLOCK_MASS, FRICTION = 1.0, 1.0
SUCCESS_POSITION = 20.0  # px, norm of the (agent xy, block xy) error
SUCCESS_ANGLE = np.pi / 9
PLAN_BLOCK_WEIGHT = 2.0  # the oracle's planning cost weighs the block's errors this much over the agent's
GOAL_STEPS = 25  # goals are the state 25 pusher steps after the start (DINO-WM: 25 ahead)
GOAL_NOISE = 0.1

# The T in body coordinates: bar (T_LENGTH x 1 scale units) on top, stem below.
_HALF_BAR, _HALF_STEM = T_LENGTH * T_SCALE / 2, T_SCALE / 2
T_BAR = [(-_HALF_BAR, T_SCALE), (_HALF_BAR, T_SCALE), (_HALF_BAR, 0.0), (-_HALF_BAR, 0.0)]
T_STEM = [(-_HALF_STEM, T_SCALE), (-_HALF_STEM, T_LENGTH * T_SCALE),
          (_HALF_STEM, T_LENGTH * T_SCALE), (_HALF_STEM, T_SCALE)]  # fmt: skip
T_OUTLINE = np.array([(-_HALF_BAR, 0), (_HALF_BAR, 0), (_HALF_BAR, T_SCALE),
                      (_HALF_STEM, T_SCALE), (_HALF_STEM, T_LENGTH * T_SCALE),
                      (-_HALF_STEM, T_LENGTH * T_SCALE), (-_HALF_STEM, T_SCALE),
                      (-_HALF_BAR, T_SCALE)], dtype=np.float64)  # fmt: skip
T_CENTER = np.array([0.0, (T_SCALE / 2 + (T_LENGTH + 1) * T_SCALE / 2) / 2])  # mean of box centres
T_EXTENT = float(np.linalg.norm(T_OUTLINE - T_CENTER, axis=1).max())  # farthest point from T_CENTER

# Colours in the spirit of DINO-WM's renders: white table, light grey walls,
# slate-grey T with a darker rim, royal-blue agent.
BACKGROUND = (255, 255, 255)
WALL_COLOR = (211, 211, 211)
T_FILL, T_EDGE = (142, 163, 183), (119, 136, 153)
AGENT_COLOR = (65, 105, 225)
SUPERSAMPLED_SIZE = 256  # draw at >= this many px, then box-filter down (anti-aliasing)


def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix of pymunk's convention (``body.local_to_world``)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def block_center(state: np.ndarray) -> np.ndarray:
    """World xy of the T's centre of mass in ``state``."""
    return state[2:4] + rotation(state[4]) @ T_CENTER


def block_on_table(state: np.ndarray) -> bool:
    """Whether the whole T lies inside the walls in ``state``."""
    corners = state[2:4] + T_OUTLINE @ rotation(state[4]).T  # [8, 2]
    return bool(np.all((corners > WALL_LO) & (corners < WALL_HI)))


class PushTEnv(GoalEnv):
    """Push the T block to the goal pose; observation = top-down image + agent pos/vel."""

    state_dim = 10
    proprio_dim = 4

    def __init__(self, resolution: int = 64, render_mode: str | None = "rgb_array"):
        super().__init__(resolution, render_mode)
        r = self.resolution
        self.observation_space = spaces.Dict(
            pixels=spaces.Box(0, 255, (r, r, 3), np.uint8),
            proprio=spaces.Box(-np.inf, np.inf, (self.proprio_dim,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._supersample = -(-SUPERSAMPLED_SIZE // r)  # ceil
        self._build_space()
        self.set_state(np.array([256.0, 400.0, 256.0, 300.0, 0, 0, 0, 0, 0, 0]))

    # -- physics ------------------------------------------------------------------
    def _build_space(self) -> None:
        """The walls and the agent; the block is added by ``_new_block``."""
        self.space = pymunk.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0
        corners = [(WALL_LO, WALL_LO), (WALL_HI, WALL_LO), (WALL_HI, WALL_HI), (WALL_LO, WALL_HI)]
        for a, b in zip(corners, corners[1:] + corners[:1]):
            self.space.add(pymunk.Segment(self.space.static_body, a, b, 2.0))
        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent_shape = pymunk.Circle(self.agent, AGENT_RADIUS)
        agent_shape.friction = FRICTION
        self.space.add(self.agent, agent_shape)
        self.block, self.block_shapes = None, []

    def _new_block(self, pose: np.ndarray) -> None:
        """Replace the block by a fresh body at ``pose`` = [x, y, angle, vx, vy, angular velocity].

        A fresh body also drops pymunk's hidden solver state for it (cached contact
        impulses, position-correction velocity), so a step depends on the state alone.
        """
        if self.block is not None:
            self.space.remove(self.block, *self.block_shapes)
        # DINO-WM gives the body twice the bar's moment of inertia; kept for fidelity.
        self.block = pymunk.Body(BLOCK_MASS, 2 * pymunk.moment_for_poly(BLOCK_MASS, T_BAR))
        self.block_shapes = [pymunk.Poly(self.block, T_BAR), pymunk.Poly(self.block, T_STEM)]
        for shape in self.block_shapes:
            shape.friction = FRICTION
        self.block.center_of_gravity = tuple(T_CENTER)
        # The angle first: pymunk rotates about the centre of mass, which moves the origin.
        self.block.angle = pose[2]
        self.block.position = tuple(pose[0:2])
        self.block.velocity, self.block.angular_velocity = tuple(pose[3:5]), pose[5]
        self.space.add(self.block, *self.block_shapes)

    def get_state(self) -> np.ndarray:
        return np.array([*self.agent.position, *self.block.position, self.block.angle,
                         *self.agent.velocity, *self.block.velocity,
                         self.block.angular_velocity], dtype=np.float64)  # fmt: skip

    def set_state(self, state: np.ndarray) -> None:
        s = self._check_state(state)
        self.agent.position, self.agent.velocity = tuple(s[0:2]), tuple(s[5:7])
        self.space.reindex_shapes_for_body(self.agent)
        self._new_block(s[[2, 3, 4, 7, 8, 9]])

    def _apply_action(self, action: np.ndarray) -> None:
        self.set_state(self.get_state())  # fresh block: no solver state from the last step
        lo, hi = WALL_LO + AGENT_RADIUS, WALL_HI - AGENT_RADIUS
        tx, ty = np.clip(np.asarray(self.agent.position) + ACTION_SCALE * action, lo, hi)
        dt = 1.0 / SIM_HZ
        for _ in range(SIM_HZ // CONTROL_HZ):  # PD control of the agent toward (tx, ty)
            (x, y), (vx, vy) = self.agent.position, self.agent.velocity
            self.agent.velocity = (vx + dt * (K_P * (tx - x) - K_V * vx), vy + dt * (K_P * (ty - y) - K_V * vy))
            self.space.step(dt)

    # -- goal API -----------------------------------------------------------------
    def sample_start_and_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Uniform start (DINO-WM's ranges; T on the table, agent clear of it); goal = 25 pusher steps later."""
        start = self._sample_start(rng)
        pusher = Pusher(rng, noise=GOAL_NOISE)
        saved = self.get_state()
        self.set_state(start)
        for _ in range(GOAL_STEPS):
            self._apply_action(self._check_action(pusher(self.get_state())))
        goal = self.get_state()
        self.set_state(saved)
        return start, goal

    def _sample_start(self, rng: np.random.Generator) -> np.ndarray:
        while True:
            agent, block = rng.uniform(50, 450, 2), rng.uniform(100, 400, 2)
            state = np.concatenate([agent, block, [rng.uniform(-np.pi, np.pi)], np.zeros(5)])
            if block_on_table(state) and not self._agent_touches_block(state):
                return state

    def _agent_touches_block(self, state: np.ndarray) -> bool:
        saved = self.get_state()
        self.set_state(state)
        touching = any(s.point_query(tuple(state[:2])).distance < AGENT_RADIUS for s in self.block_shapes)
        self.set_state(saved)
        return touching

    def evaluate(self, state: np.ndarray, goal_state: np.ndarray) -> dict[str, Any]:
        agent_error, block_error, angle_error = self._errors(state, goal_state)
        position_error = float(np.hypot(agent_error, block_error))  # norm of the (agent xy, block xy) error
        return {
            "success": position_error < SUCCESS_POSITION and angle_error < SUCCESS_ANGLE,
            "distance": position_error,
        }

    def planning_cost(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        """The true-simulator oracle's cost (``EnvDistance``): ``pose_cost`` of the two states' pose features.

        Oracle success (``planner=cem_white execute_k=1``, 50 ``expert`` dataset goals): 0.96;
        with the angle's weight 1: 0.94; with the ``distance``: 0.76.
        """
        s, g = self._check_state(state), self._check_state(goal_state)
        return float(self.pose_cost(self.pose_features(s), self.pose_features(g)))

    def pose_features(self, states: np.ndarray) -> np.ndarray:
        """``[..., 10]`` -> ``[..., 6]``: agent xy, block xy, cos and sin of the block angle
        (the angle as a unit vector, so a probe's target does not jump at +-pi)."""
        s = np.asarray(states, dtype=np.float64)
        if s.shape[-1] != self.state_dim:
            raise ValueError(f"PushT states must be [..., {self.state_dim}], got {s.shape}")
        return np.concatenate([s[..., :4], np.cos(s[..., 4:5]), np.sin(s[..., 4:5])], axis=-1)

    def pose_cost(self, features, goal):
        """The success test's errors over their thresholds, on pose features (numpy or torch):

        ``|(agent xy, w * block xy) error| / SUCCESS_POSITION + w * angle error / SUCCESS_ANGLE``
        with ``w = PLAN_BLOCK_WEIGHT``. The ``distance`` alone ignores the angle, which success
        needs; and the block's errors count ``w`` times the agent's because replanning places
        the agent within a step or two, while a bad push cannot be undone in the budget. The
        angle error is the angle between the (cos, sin) vectors, so a probe's predictions,
        which are not unit vectors, still score by their direction.
        """
        d = features - goal
        agent_sq = d[..., 0] ** 2 + d[..., 1] ** 2
        block_sq = d[..., 2] ** 2 + d[..., 3] ** 2
        c, s, gc, gs = features[..., 4], features[..., 5], goal[..., 4], goal[..., 5]
        cross, dot = s * gc - c * gs, c * gc + s * gs
        angle = abs(np.arctan2(cross, dot) if isinstance(cross, np.ndarray | np.floating) else cross.atan2(dot))
        w = PLAN_BLOCK_WEIGHT
        return (agent_sq + w**2 * block_sq) ** 0.5 / SUCCESS_POSITION + w * angle / SUCCESS_ANGLE

    def pose_from_proprio(self, pose, proprio):
        """The agent's xy from the proprio (agent xy, agent velocity), the block's pose from the probe."""
        import torch  # here: the env itself stays torch-free

        return torch.cat([proprio[..., :2].to(pose), pose[..., 2:]], dim=-1)

    def _errors(self, state: np.ndarray, goal_state: np.ndarray) -> tuple[float, float, float]:
        """(agent xy error px, block xy error px, block angle error rad in [0, pi]) of ``state`` to the goal."""
        s, g = self._check_state(state), self._check_state(goal_state)
        angle_error = abs(float((s[4] - g[4] + np.pi) % (2 * np.pi) - np.pi))
        return float(np.linalg.norm(s[:2] - g[:2])), float(np.linalg.norm(s[2:4] - g[2:4])), angle_error

    # -- observation --------------------------------------------------------------
    def _proprio(self) -> np.ndarray:
        return np.array([*self.agent.position, *self.agent.velocity], dtype=np.float32)

    def _render(self) -> np.ndarray:
        size = self.resolution * self._supersample
        px = size / WORLD  # image px per world px
        image = Image.new("RGB", (size, size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        draw.rectangle([WALL_LO * px, WALL_LO * px, WALL_HI * px, WALL_HI * px],
                       outline=WALL_COLOR, width=max(1, round(4 * px)))  # fmt: skip
        block = np.asarray(self.block.position) + T_OUTLINE @ rotation(self.block.angle).T  # [8, 2]
        draw.polygon([tuple(p) for p in block * px], fill=T_FILL, outline=T_EDGE, width=max(1, round(4 * px)))
        ax, ay = self.agent.position
        draw.ellipse([(ax - AGENT_RADIUS) * px, (ay - AGENT_RADIUS) * px,
                      (ax + AGENT_RADIUS) * px, (ay + AGENT_RADIUS) * px], fill=AGENT_COLOR)  # fmt: skip
        return np.asarray(image.reduce(self._supersample))


class Pusher:
    """Scripted noisy pusher: circles behind the T and pushes it toward a target point.

    The target is drawn uniformly from the middle of the table and redrawn when the block's
    centre arrives, so an episode keeps moving the block. ``pusher(state) -> action [2]``.
    """

    ORBIT = T_EXTENT + AGENT_RADIUS + 12.0  # circle the block this far from its centre
    ORBIT_STEP = np.pi / 4  # next waypoint this far round the orbit (chord clears the T)
    ALIGNED = np.radians(30)  # agent within this angle of "behind": push
    BACK_OFF = 0.8  # closer than this fraction of ORBIT: move out before circling
    LEAD = 40.0  # push toward a point this far past the block's centre
    ARRIVED = 15.0
    SPEED = 0.5  # largest action norm before noise: at most ~25 px per step, a gentle push

    def __init__(self, rng: np.random.Generator, noise: float = 0.2):
        if noise < 0:
            raise ValueError(f"Pusher: noise must be >= 0, got {noise}")
        self.rng, self.noise = rng, float(noise)
        self.target = self._draw_target()

    def _draw_target(self) -> np.ndarray:
        return self.rng.uniform(128, 384, 2)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        agent, center = state[:2], block_center(state)
        if np.linalg.norm(self.target - center) < self.ARRIVED:
            self.target = self._draw_target()
        push = (self.target - center) / np.linalg.norm(self.target - center)  # unit [2]
        rel = agent - center
        behind, now = np.arctan2(-push[1], -push[0]), np.arctan2(rel[1], rel[0])
        gap = (behind - now + np.pi) % (2 * np.pi) - np.pi  # signed angle still to go round
        if abs(gap) <= self.ALIGNED:
            waypoint = center + self.LEAD * push
        else:  # go round the block the shorter way, never through it
            # Back straight out to the orbit first: turning from close in drags the T along.
            step = self.ORBIT_STEP if np.linalg.norm(rel) > self.BACK_OFF * self.ORBIT else 0.0
            heading = now + np.sign(gap) * min(abs(gap), step)
            waypoint = center + self.ORBIT * np.array([np.cos(heading), np.sin(heading)])
        waypoint = np.clip(waypoint, WALL_LO + AGENT_RADIUS, WALL_HI - AGENT_RADIUS)
        action = (waypoint - agent) / ACTION_SCALE
        action *= min(1.0, self.SPEED / max(np.linalg.norm(action), 1e-9))
        action += self.noise * self.rng.normal(size=2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
