"""Data-collection policies: what drives an env while a dataset is recorded.

A policy is built per episode by ``make_policy(name, env, rng)`` with its own
``numpy.random.Generator``, so an episode's actions depend on that generator alone.
``policy.reset(obs, info)`` starts an episode, ``policy(obs, info)`` returns the next env
action ``float32 [A]``. Policies read the true state from ``info["state"]``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np


class Policy(Protocol):
    def reset(self, obs: dict, info: dict) -> None: ...

    def __call__(self, obs: dict, info: dict) -> np.ndarray: ...


class RandomPolicy:
    """Uniform actions over the action box (DINO-WM's random data for Wall, Maze, Rope, Granular)."""

    def __init__(self, env: gym.Env, rng: np.random.Generator):
        self.low, self.high = env.action_space.low, env.action_space.high
        self.rng = rng

    def reset(self, obs: dict, info: dict) -> None:
        pass

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class StickyRandomPolicy(RandomPolicy):
    """Uniform actions, each held for a geometric number of steps (mean ``hold``).

    Uniform i.i.d. actions make the Wall dot random-walk (5% of 50-step episodes from the
    env's reset states cross the door), while a planner's plans move it straight and fast
    into walls and through the door. Held actions cover that regime (hold 5: 14% cross).
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, hold: float = 5.0):
        if not hold >= 1.0:
            raise ValueError(f"sticky_random: hold is the mean steps an action is held, >= 1; got {hold}")
        super().__init__(env, rng)
        self.switch = 1.0 / hold
        self.action = super().__call__(None, {})

    def reset(self, obs: dict, info: dict) -> None:
        self.action = super().__call__(obs, info)

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        if self.rng.random() < self.switch:
            self.action = super().__call__(obs, info)
        return self.action.copy()


class PusherPolicy:
    """PushT: the env module's scripted noisy pusher, which keeps the T block moving.

    Keyword arguments (e.g. ``noise``) go to ``wmplan.envs.pusht.Pusher``.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, **kwargs: Any):
        from wmplan.envs import pusht

        _require(env, pusht.PushTEnv, "pusher")
        self.rng, self.kwargs = rng, kwargs
        self.pusher = pusht.Pusher(rng, **kwargs)

    def reset(self, obs: dict, info: dict) -> None:
        self.pusher = type(self.pusher)(self.rng, **self.kwargs)  # a fresh push target

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        return np.asarray(self.pusher(info["state"]), dtype=np.float32)


class ExpertPolicy:
    """PushT: an expert-like demonstrator that pushes the T into a target pose at human speed.

    Stands in for the human demonstrations behind DINO-WM's PushT data (Diffusion Policy's
    206 demos, 125 steps long on average, replayed with noise): its agent velocity has a std
    of ~75 px/s per axis, ~10 px per 10 Hz step RMS, which this policy matches (the
    ``pusher``: ~145 px/s). A 25-step window moves the block ~30 px (median; ``pusher``
    ~75 px), so dataset goals 25 steps ahead are reachable in a 50-step budget.

    Loop: pick a contact point on the T's outline, travel to the ray out along the contact's
    outward normal (round the T if it is in the way), come in along the ray and push along
    the inward normal while that helps. A contact's *rate* is how fast a push there shrinks
    the T's pose distance to the target pose, per px pushed, from the rigid-body response to
    an impulse at the contact (the block has no table friction: it moves only as pushed);
    contacts are drawn with weights growing with rate, less the travel to them. The first
    target is Diffusion Policy's goal pose; once the T is there a new pose is drawn, so an
    episode keeps moving. Speeds are drawn per contact and the actions carry smooth (AR(1))
    noise, as a hand's would.
    """

    TARGET = (256.0, 256.0, np.pi / 4)  # Diffusion Policy's PushT goal pose (x, y, angle)
    TRAVEL_SPEED = (12.0, 24.0)  # px per env step between contacts, drawn per contact
    PUSH_SPEED = (6.0, 12.0)  # px per env step while pushing, drawn per contact
    SPACING = 10.0  # px between candidate contact points along the outline
    CLEARANCE = 2.0  # px kept between agent and T while travelling
    GAP = 3.0  # agent this far from the surface when lined up, before pushing
    APPROACH = 25.0  # below this far out on the contact ray, come in at push speed
    DEPTH = 30.0  # push toward a point this far inside the surface (the speed cap sets the pace)
    LOST = 12.0  # agent this far from its contact while pushing: line up again
    LINED_UP = 6.0  # px: agent this close to the contact ray is on it
    MIN_RATE = 0.15  # px of pose distance removed per px pushed, below which a contact is done
    STALL = 8  # pushing steps without progress after which the contact is dropped
    TRAVEL_COST = 0.1  # px of expected gain given up per px of travel to a contact
    TEMPERATURE = 5.0  # px: contact weights exp(score / TEMPERATURE)
    DONE = 6.0  # px: pose distance at which the target pose is reached (~5 px and ~5 deg)
    NOISE, NOISE_CORRELATION = 0.03, 0.8  # AR(1) action noise (std in action units)

    def __init__(self, env: gym.Env, rng: np.random.Generator, noise: float = NOISE):
        from wmplan.envs import pusht

        inner = _require(env, pusht.PushTEnv, "expert")
        if not noise >= 0:
            raise ValueError(f"expert: noise must be >= 0, got {noise}")
        self.pusht, self.rng, self.noise_std = pusht, rng, float(noise)
        self.radius = pusht.AGENT_RADIUS
        self.tee = _Tee(pusht, inner.block.mass, inner.block.moment)
        self.body_points, self.body_normals = self.tee.contacts(self.SPACING, self.radius + self.CLEARANCE)
        self.reset(None, {})

    def reset(self, obs: dict | None, info: dict) -> None:
        self.target = np.array(self.TARGET)
        self.contact, self.pushing, self.progress = None, False, []
        self.noise = np.zeros(2)

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        state = info["state"]
        if self.tee.pose_distance(state, self.target) < self.DONE:
            self.target, self.contact = self._draw_target(), None
        distance = self.tee.pose_distance(state, self.target)
        points = self.tee.to_world(state, self.body_points)
        normals = self.tee.to_world(state, self.body_normals, translate=False)
        rates = self.tee.push_rates(state, points, normals, self.target)
        standoffs = points + normals * (self.radius + self.GAP)  # lined-up agent positions
        rates[~self._reachable(standoffs)] = -np.inf
        if self.pushing:
            self.progress.append(distance)
        if self._contact_done(rates):
            travel = np.linalg.norm(standoffs - state[:2], axis=1)
            self._choose_contact(rates, distance * rates - self.TRAVEL_COST * travel)
        c = self.contact
        waypoint, speed = self._waypoint(state, points[c], normals[c], standoffs[c])
        return self._action(waypoint - state[:2], speed)

    # -- contacts -------------------------------------------------------------------
    def _reachable(self, standoffs: np.ndarray) -> np.ndarray:
        """Contacts whose lined-up agent position lies inside the walls."""
        lo, hi = self.pusht.WALL_LO + self.radius, self.pusht.WALL_HI - self.radius
        return np.all((standoffs > lo) & (standoffs < hi), axis=1)

    def _contact_done(self, rates: np.ndarray) -> bool:
        """Whether to pick a new contact: none yet, this one no longer helps, or pushing it stalled."""
        if self.contact is None or rates[self.contact] < self.MIN_RATE:
            return True
        if self.pushing:  # the rate is a first-order guess (walls, sliding): check the distance falls
            return len(self.progress) > self.STALL and self.progress[-1] > self.progress[-1 - self.STALL] - 1.0
        # On the way to a contact that has become much worse than the best: rethink, as a human would.
        return rates[self.contact] < 0.5 * rates.max()

    def _choose_contact(self, rates: np.ndarray, scores: np.ndarray) -> None:
        """Draw a contact among those that help, favouring high ``scores`` (px gained less travel)."""
        scores = np.where(rates >= self.MIN_RATE, scores, -np.inf) if rates.max() >= self.MIN_RATE else scores
        weights = np.exp((scores - scores.max()) / self.TEMPERATURE)  # 0 for unreachable contacts
        contact = int(self.rng.choice(len(scores), p=weights / weights.sum()))
        if contact != self.contact:
            self.pushing = False
        self.contact, self.progress = contact, []
        self.travel_speed, self.push_speed = self.rng.uniform(*self.TRAVEL_SPEED), self.rng.uniform(*self.PUSH_SPEED)

    def _draw_target(self) -> np.ndarray:
        """A new target pose with the whole T on the table, away from the walls."""
        while True:
            pose = np.array([*self.rng.uniform(150, 362, 2), self.rng.uniform(-np.pi, np.pi)])
            if self.pusht.block_on_table(np.concatenate([[0, 0], pose, np.zeros(5)])):
                return pose

    # -- motion ---------------------------------------------------------------------
    def _waypoint(self, state: np.ndarray, point: np.ndarray, normal: np.ndarray, standoff: np.ndarray):
        """(waypoint, speed): push through the contact, come in along its ray, or travel to the ray."""
        agent = state[:2]
        if self.pushing and np.linalg.norm(agent - (point + normal * self.radius)) > self.LOST:
            self.pushing = False  # slid off the contact: line up again
        rel = agent - standoff
        along = rel @ normal
        on_ray = along > -2.0 and np.linalg.norm(rel - along * normal) < self.LINED_UP
        if on_ray or self.pushing:  # come in along the ray and push through the contact
            self.pushing = self.pushing or along < 3.0
            speed = self.travel_speed if along > self.APPROACH else self.push_speed
            return point + normal * (self.radius - self.DEPTH), speed
        # The ray out of a contact never meets the T again: enter it where the way is clear.
        clearance = self.radius + self.CLEARANCE
        for distance in self.APPROACH + 20.0 * np.arange(6):
            entry = standoff + distance * normal
            if self.tee.segment_clear(state, agent, entry, clearance):
                return entry, self.travel_speed
        return self.tee.orbit_waypoint(state, agent, standoff + self.APPROACH * normal, clearance), self.travel_speed

    def _action(self, offset: np.ndarray, speed: float) -> np.ndarray:
        """Relative action toward ``offset`` px away at ``speed`` px per step, plus smooth noise.

        The PD controller settles at velocity ``K_P / K_V * 100 * |action|`` px/s, i.e. 50 px
        per 10 Hz step per unit of action, so ``speed`` px per step needs ``speed / 50``.
        """
        action = offset / self.pusht.ACTION_SCALE
        action *= min(1.0, speed / 50.0 / max(np.linalg.norm(action), 1e-9))
        rho = self.NOISE_CORRELATION
        self.noise = rho * self.noise + np.sqrt(1 - rho**2) * self.noise_std * self.rng.normal(size=2)
        return np.clip(action + self.noise, -1.0, 1.0).astype(np.float32)


class _Tee:
    """The T block's geometry (body coordinates) and push mechanics, for ``ExpertPolicy``."""

    ORBIT_MARGIN = 16.0  # px between the agent on the orbit and the farthest reach of the T
    ORBIT_STEP = np.pi / 6  # next orbit waypoint this far round: the chord keeps ~12 px clear

    def __init__(self, pusht, mass: float, moment: float):
        self.pusht, self.mass, self.moment = pusht, mass, moment
        self.gyration = np.sqrt(moment / mass)  # px: RMS distance the mass moves per rad turned
        boxes = [np.array(pusht.T_BAR), np.array(pusht.T_STEM)]
        self.boxes = [(b.min(0), b.max(0)) for b in boxes]  # (lo, hi) corners of the two boxes
        self.orbit = pusht.T_EXTENT + pusht.AGENT_RADIUS + self.ORBIT_MARGIN

    def distance(self, body_points: np.ndarray) -> np.ndarray:
        """Distance [N] from body-frame points [N, 2] to the T (0 inside)."""
        gaps = [np.linalg.norm(np.maximum(np.maximum(lo - body_points, body_points - hi), 0), axis=1)
                for lo, hi in self.boxes]  # fmt: skip
        return np.minimum(*gaps)

    def contacts(self, spacing: float, clearance: float) -> tuple[np.ndarray, np.ndarray]:
        """Outline points [N, 2], ``spacing`` apart, and their outward normals [N, 2].

        Kept: points whose ray out along the normal keeps an agent centred on it
        ``clearance`` from the T, which drops the T's inner corners. Past the bar's ends the
        T has nothing to meet again, so checking the first 2 bar lengths covers the ray.
        """
        outline = np.asarray(self.pusht.T_OUTLINE)
        points, normals = [], []
        for a, b in zip(outline, np.roll(outline, -1, axis=0)):
            edge = b - a
            n = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)
            if self.distance((a + b)[None] / 2 + n) == 0:  # points into the T: flip
                n = -n
            for t in (np.arange(np.floor(np.linalg.norm(edge) / spacing)) + 0.5) * spacing / np.linalg.norm(edge):
                points.append(a + t * edge)
                normals.append(n)
        points, normals = np.array(points), np.array(normals)
        ray = np.linspace(clearance, clearance + 2 * np.ptp(outline[:, 0]), 50)
        keep = np.all([self.distance(points + normals * d) >= clearance - 1e-9 for d in ray], axis=0)
        return points[keep], normals[keep]

    def push_rates(self, state: np.ndarray, points: np.ndarray, normals: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Per contact [N], px of pose distance to ``goal`` removed per px pushed there (first order).

        Pose distance: ``sqrt(|centre of mass error|^2 + (gyration * angle error)^2)``, px.
        A push along ``d = -normal`` at lever ``r`` from the centre of mass is an impulse
        ``j d`` with ``j = 1 / (1 / mass + (r x d)^2 / moment)`` per px the contact point
        moves: the block moves ``j d / mass`` and turns ``j (r x d) / moment``.
        """
        shift, turn = self.pose_error(state, goal)
        distance = max(np.hypot(np.linalg.norm(shift), self.gyration * turn), 1e-9)
        lever, push = points - self.pusht.block_center(state), -normals  # [N, 2] each
        torque = lever[:, 0] * push[:, 1] - lever[:, 1] * push[:, 0]  # r x d
        impulse = 1.0 / (1.0 / self.mass + torque**2 / self.moment)
        velocity, spin = impulse[:, None] * push / self.mass, impulse * torque / self.moment
        return (velocity @ shift + self.gyration**2 * spin * turn) / distance

    def pose_error(self, state: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, float]:
        """(centre-of-mass offset [2] px, angle offset rad in [-pi, pi)) from the T of ``state`` to ``goal``."""
        center = self.pusht.T_CENTER
        shift = goal[:2] + self.pusht.rotation(goal[2]) @ center - self.pusht.block_center(state)
        return shift, float((goal[2] - state[4] + np.pi) % (2 * np.pi) - np.pi)

    def pose_distance(self, state: np.ndarray, goal: np.ndarray) -> float:
        """Px from the T of ``state`` to pose ``goal``: centre-of-mass and gyration-weighted angle errors."""
        shift, turn = self.pose_error(state, goal)
        return float(np.hypot(np.linalg.norm(shift), self.gyration * turn))

    def to_world(self, pose: np.ndarray, body: np.ndarray, translate: bool = True) -> np.ndarray:
        """Body-frame points (or, untranslated, directions) [N, 2] in world coordinates.

        ``pose`` is a state or an ``(x, y, angle)`` pose of the T.
        """
        xy, angle = (pose[2:4], pose[4]) if len(pose) > 3 else (pose[:2], pose[2])
        return (xy if translate else 0.0) + body @ self.pusht.rotation(angle).T

    def to_body(self, state: np.ndarray, world: np.ndarray) -> np.ndarray:
        """World points [N, 2] in the body frame of the T of ``state``."""
        return (world - state[2:4]) @ self.pusht.rotation(state[4])

    def segment_clear(self, state: np.ndarray, a: np.ndarray, b: np.ndarray, clearance: float) -> bool:
        """Whether the agent can move straight from ``a`` to ``b`` keeping ``clearance`` from the T."""
        path = a + np.linspace(0, 1, 12)[:, None] * (b - a)
        return bool(self.distance(self.to_body(state, path)).min() >= clearance)

    def orbit_waypoint(self, state: np.ndarray, agent: np.ndarray, goal: np.ndarray, clearance: float) -> np.ndarray:
        """Next waypoint on a circle round the T's centre toward ``goal``, the shorter way."""
        center = self.pusht.block_center(state)
        rel = agent - center
        now, aim = np.arctan2(rel[1], rel[0]), np.arctan2(*(goal - center)[::-1])
        gap = (aim - now + np.pi) % (2 * np.pi) - np.pi
        heading = now + np.sign(gap) * min(abs(gap), self.ORBIT_STEP)
        waypoint = center + self.orbit * np.array([np.cos(heading), np.sin(heading)])
        if not self.segment_clear(state, agent, waypoint, clearance):
            # Too close in to go round: back straight out past the orbit first (turning here drags the T).
            waypoint = center + (self.orbit + self.ORBIT_MARGIN) * rel / max(np.linalg.norm(rel), 1e-9)
        lo, hi = self.pusht.WALL_LO + self.pusht.AGENT_RADIUS, self.pusht.WALL_HI - self.pusht.AGENT_RADIUS
        return np.clip(waypoint, lo, hi)


class WaypointPolicy:
    """PointMaze: follow the maze's shortest path to a random free cell, then pick another.

    Gaussian action noise (std ``noise``) keeps the recorded actions diverse, so a world
    model sees more than the controller's saturated pushes.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, noise: float = 0.3, reach: float = 0.3):
        from wmplan.envs.pointmaze import PointMazeEnv

        self.maze = _require(env, PointMazeEnv, "waypoint")
        self.cells = np.argwhere(self.maze.grid).astype(np.float64)  # free cell centres [N, 2]
        self.rng, self.noise, self.reach = rng, noise, reach
        self.target = self.cells[0]

    def reset(self, obs: dict, info: dict) -> None:
        self._new_target(info["state"])

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        state = info["state"]
        if np.linalg.norm(state[:2] - self.target) < self.reach:
            self._new_target(state)
        action = self.maze.waypoint_action(state, self.target)
        action = action + self.noise * self.rng.standard_normal(action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _new_target(self, state: np.ndarray) -> None:
        # Any free cell except the one we are in, so the ball always has somewhere to go.
        far = np.linalg.norm(self.cells - state[:2], axis=1) >= self.reach
        candidates = self.cells[far] if far.any() else self.cells
        self.target = candidates[self.rng.integers(len(candidates))]


class AimedPushPolicy:
    """Rope / Granular: pushes aimed through the objects, so that most recorded pushes move them.

    Uniform random pushes mostly miss (about 36% touch the rope). Each push here picks a
    random particle, starts ``approach`` metres from it on a random side and runs through it
    for a length drawn from ``length`` (m), with Gaussian jitter ``noise`` (m) on both ends.
    With probability ``random_fraction`` it is a uniform random push instead, so the data
    still show the misses a planner's candidates make.
    """

    def __init__(self, env: gym.Env, rng: np.random.Generator, approach: float = 0.04,
                 length: tuple[float, float] = (0.05, 0.2), noise: float = 0.01, random_fraction: float = 0.2):
        from wmplan.envs import deformable

        self.env = _require(env, deformable.TablePushEnv, "aimed_push")
        if not (0 <= random_fraction <= 1 and approach >= 0 and noise >= 0 and 0 < length[0] <= length[1]):
            raise ValueError(f"aimed_push: need approach, noise >= 0, 0 < length[0] <= length[1] and random_fraction "
                             f"in [0, 1]; got {approach}, {noise}, {length}, {random_fraction}")
        self.workspace = deformable.WORKSPACE
        self.rng, self.approach, self.length = rng, approach, tuple(length)
        self.noise, self.random_fraction = noise, random_fraction
        self.random = RandomPolicy(env, rng)

    def reset(self, obs: dict, info: dict) -> None:
        pass

    def __call__(self, obs: dict, info: dict) -> np.ndarray:
        if self.rng.random() < self.random_fraction:
            return self.random(obs, info)
        particles = self.env.particle_positions(info["state"])[:, :2]  # [N, 2] world xy (m)
        target = particles[self.rng.integers(len(particles))]
        angle = self.rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        start = target - self.approach * direction + self.noise * self.rng.standard_normal(2)
        end = target + (self.rng.uniform(*self.length) - self.approach) * direction + self.noise * self.rng.standard_normal(2)
        return np.clip(np.concatenate([start, end]) / self.workspace, -1.0, 1.0).astype(np.float32)


POLICIES: dict[str, Callable[..., Policy]] = {
    "random": RandomPolicy,
    "sticky_random": StickyRandomPolicy,
    "pusher": PusherPolicy,
    "expert": ExpertPolicy,
    "waypoint": WaypointPolicy,
    "aimed_push": AimedPushPolicy,
}


def make_policy(name: str, env: gym.Env, rng: np.random.Generator, **kwargs: Any) -> Policy:
    """Build policy ``name`` for ``env`` (a raw or gym.make-wrapped wmplan env)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return POLICIES[name](env, rng, **kwargs)


def _require(env: gym.Env, cls: type, policy: str):
    """The unwrapped env if it is a ``cls``, else a clear error."""
    inner = env.unwrapped
    if not isinstance(inner, cls):
        raise ValueError(f"policy {policy!r} needs a {cls.__name__}, got {type(inner).__name__}")
    return inner
