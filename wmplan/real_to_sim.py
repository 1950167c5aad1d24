"""Real-to-sim policy evaluation: rank policies by their success inside a world model
(Vid2World's Algorithm 3, after SIMPLER), next to their success in the real env.

    wmplan-real-to-sim env=pointmaze_umaze world_model=pretrained:umaze data=data/pointmaze_umaze starts=50

1. Every policy runs in closed loop inside the world model from the real start observations
   (``sample_start_and_goal`` from ``seed``, the same starts for every policy and for the real
   runs). At each planner step the policy sees the *predicted* observation (the predicted
   proprio in env units; decoded frames for policies that read pixels) and returns one planner
   action (``frameskip`` env actions); the model predicts the next frame from the last
   ``context_frames`` predicted frames (a sliding window of its own predictions).
2. A success detector scores each imagined rollout: a ridge probe from latents (+ predicted
   proprio) to the env state, fitted on a dataset's train split and validated on its val split,
   then the env's ``evaluate(probed_state, goal)`` after every planner step.
3. The same policies (same seeds, so the same noise) run in the real env from the same starts;
   the report gives each policy's estimated and real success and the agreement of the two
   rankings (Spearman's rho, Kendall's tau, SIMPLER's MMRV).

Policies are goal-conditioned and act once per planner step (the world model only shows them
a frame every ``frameskip`` env steps; the real runs use the same rate so both runs evaluate
the same policy). ``world_model=oracle`` puts the true simulator in the model's place: with
it the estimated success equals the real one (tested), which checks the harness itself.
"""

from __future__ import annotations

import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from wmplan.atomic import write_json_atomic
from wmplan.cli import check_numbers, reports_user_errors
from wmplan.config_dir import CONFIG_DIR
from wmplan.planners.mpc import sample_episodes
from wmplan.planners.oracle import OracleModel
from wmplan.seeding import stream_seed

SUCCESS_RULES = ("last", "any")
PROBE_FEATURES = ("latents+proprio", "latents", "proprio")


# -- goal-conditioned policies ------------------------------------------------------------
class GoalPolicy:
    """Called once per planner step on an observation, returns one planner action [k*A].

    ``noise``: std of Gaussian action noise, one draw per planner step held over its ``k`` env
    actions (i.i.d. noise per env step averages out under PointMaze's inertia: waypoint control
    with std 1.0 still succeeds in 50 of 50 episodes). ``active_steps``: act for that many
    planner steps, then send zeros (a "lazy" policy that gives up half-way).
    """

    needs_proprio = True
    needs_pixels = False

    def __init__(self, env, rng: np.random.Generator, frameskip: int, noise: float = 0.0,
                 active_steps: int | None = None):
        if not noise >= 0:
            raise ValueError(f"policy noise must be >= 0, got {noise!r}")
        if active_steps is not None and (isinstance(active_steps, bool) or not isinstance(active_steps, int)
                                         or active_steps < 0):
            raise ValueError(f"active_steps must be an int >= 0 or null, got {active_steps!r}")
        self.env, self.rng, self.k = env.unwrapped, rng, int(frameskip)
        self.noise, self.active_steps = float(noise), active_steps
        self.action_dim = self.env.action_space.shape[0]
        self.goal, self.t = None, 0

    def reset(self, goal_state: np.ndarray) -> None:
        self.goal, self.t = np.asarray(goal_state, dtype=np.float64), 0

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        if self.needs_proprio and obs.get("proprio") is None:
            raise ValueError(f"{type(self).__name__} acts on proprio, but the observation has none")
        # Always draw the noise, so the stream stays aligned however the policy acts this step.
        noise = self.noise * self.rng.standard_normal(self.action_dim)  # [A], held over the chunk
        lazy = self.active_steps is not None and self.t >= self.active_steps
        chunk = np.zeros((self.k, self.action_dim)) if lazy else self.chunk(obs) + noise  # [k, A]
        self.t += 1
        return np.clip(chunk, -1.0, 1.0).reshape(-1).astype(np.float32)

    def chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError


class RandomGoalPolicy(GoalPolicy):
    """Uniform env actions, i.i.d. per env step: ignores the goal (the lower bound)."""

    needs_proprio = False

    def chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, (self.k, self.action_dim))


class MazeWaypointPolicy(GoalPolicy):
    """PointMaze: ``waypoint_action`` toward the goal along the maze's shortest path.

    One observation per ``k`` env steps is too coarse for the PD controller with its action
    held (it overshoots: 58% success at the end of 50 steps); instead each of the ``k``
    actions is computed on a nominal prediction of the ball (the motor and damping without
    walls) from the observed state: 100% (50 starts, U-maze).
    """

    def __init__(self, env, rng, frameskip, **kwargs):
        from wmplan.envs import pointmaze

        super().__init__(env, rng, frameskip, **kwargs)
        self.pm = pointmaze
        model = self.env.model
        self.dt, self.mass = float(model.opt.timestep), float(model.body_mass[1])
        self.damping, self.gear = model.dof_damping.copy(), model.actuator_gear[:, 0].copy()

    def chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        state = np.asarray(obs["proprio"], dtype=np.float64)  # PointMaze proprio = (x, y, vx, vy)
        actions = []
        for _ in range(self.k):
            actions.append(self.env.waypoint_action(self._in_free_cell(state), self.goal[:2]))
            state = self._nominal_step(state, actions[-1])
        return np.stack(actions)

    def _in_free_cell(self, state: np.ndarray) -> np.ndarray:
        """A predicted ball may sit in a wall cell: plan from the nearest free cell's edge."""
        cell = np.asarray(self.env._nearest_free_cell(state[:2]), dtype=np.float64)
        return np.concatenate([np.clip(state[:2], cell - 0.49, cell + 0.49), state[2:]])

    def _nominal_step(self, state: np.ndarray, action: np.ndarray) -> np.ndarray:
        p, v = state[:2].copy(), state[2:].copy()
        for _ in range(self.pm.FRAME_SKIP):  # MuJoCo's semi-implicit Euler substeps
            v = v + self.dt * (self.gear * action - self.damping * v) / self.mass
            p = p + self.dt * v
        return np.concatenate([p, np.clip(v, -self.pm.MAX_SPEED, self.pm.MAX_SPEED)])


class WallDoorPolicy(GoalPolicy):
    """Wall: straight to the goal in its room; from the other room, to the door and through it."""

    def __init__(self, env, rng, frameskip, **kwargs):
        from wmplan.envs import wall

        super().__init__(env, rng, frameskip, **kwargs)
        self.wall = wall

    def chunk(self, obs: Mapping[str, Any]) -> np.ndarray:
        p = np.asarray(obs["proprio"], dtype=np.float64)[:2]  # Wall proprio = dot (x, y)
        actions = []
        for _ in range(self.k):
            a = np.clip((self._target(p) - p) / self.wall.ACTION_GAIN, -1.0, 1.0)
            actions.append(a)
            p = p + self.wall.ACTION_GAIN * a  # nominal motion, walls ignored
        return np.stack(actions)

    def _target(self, p: np.ndarray) -> np.ndarray:
        w, goal, door = self.wall, self.goal[:2], self.goal[2]
        if np.sign(p[0] - w.WALL_X) == np.sign(goal[0] - w.WALL_X):
            return goal
        side = np.sign(p[0] - w.WALL_X)
        if abs(p[1] - door) > w.DOOR_HALF_GAP - 1.5:  # line up in front of the door first
            return np.array([w.WALL_X + side * (w.WALL_HALF_WIDTH + 2.0), door])
        return np.array([w.WALL_X - side * (w.WALL_HALF_WIDTH + 2.0), door])  # through it


def scripted_policy(env, rng, frameskip, **kwargs) -> GoalPolicy:
    """The env's scripted goal controller (PointMaze: maze waypoints, Wall: through the door)."""
    from wmplan.envs.pointmaze import PointMazeEnv
    from wmplan.envs.wall import WallEnv

    controllers = {PointMazeEnv: MazeWaypointPolicy, WallEnv: WallDoorPolicy}
    for cls, policy in controllers.items():
        if isinstance(env.unwrapped, cls):
            return policy(env, rng, frameskip, **kwargs)
    raise ValueError(f"policy 'scripted' has no controller for {type(env.unwrapped).__name__}; "
                     f"known: {sorted(c.__name__ for c in controllers)}")


GOAL_POLICIES: dict[str, Callable[..., GoalPolicy]] = {"scripted": scripted_policy, "random": RandomGoalPolicy}


def label_id(label: str) -> int:
    """A stable int per policy label: its randomness does not depend on the other policies."""
    return zlib.crc32(label.encode())


def policy_specs(policies: Any) -> dict[str, dict[str, Any]]:
    """The config's list of ``{name, policy, **kwargs}`` as label -> spec, checked."""
    if not isinstance(policies, (list, tuple)) or len(policies) < 2:
        raise ValueError(f"policies must list at least 2 policies (a ranking needs two), got {policies!r}")
    specs = {}
    for spec in policies:
        spec = dict(spec)
        label = spec.pop("name", None)
        if not isinstance(label, str) or label in specs:
            raise ValueError(f"every policy needs a unique string name, got {label!r}")
        specs[label] = spec
    return specs


def build_policies(specs: Mapping[str, Mapping[str, Any]], env, episodes: Sequence[tuple[np.ndarray, np.ndarray]],
                   seed: int) -> list[GoalPolicy]:
    """One fresh, reset policy per (policy, start) pair, policy-major; rollout (label, i) draws
    its noise from ``(seed, i, label)`` alone, so its real and imagined runs see the same noise."""
    frameskip = env.action_space.shape[0] // env.unwrapped.action_space.shape[0]
    policies = []
    for label, spec in specs.items():
        spec = dict(spec)
        name = spec.pop("policy", None)
        if name not in GOAL_POLICIES:
            raise ValueError(f"policy {label!r}: unknown policy {name!r}; known: {sorted(GOAL_POLICIES)}")
        for i, (_, goal) in enumerate(episodes):
            policy = GOAL_POLICIES[name](env, np.random.default_rng([seed, i, label_id(label)]), frameskip, **spec)
            policy.reset(goal)
            policies.append(policy)
    return policies


# -- closed loop in the world model ----------------------------------------------------------
class OracleWorldModel:
    """The true simulator behind the interface ``imagine`` uses: latents are states
    [S, 1, 1], proprio is in env units. Estimated success then equals real success."""

    uses_proprio, context_frames, checkpoint_hash, precision = True, 1, None, None

    def __init__(self, env):
        self.oracle, self.env = OracleModel(env), env.unwrapped

    def encode(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """state [..., S] -> latents [..., S, 1, 1]; proprio [..., P] as it is."""
        return {"latents": torch.as_tensor(np.asarray(obs["state"]), dtype=torch.float64)[..., None, None],
                "proprio": torch.as_tensor(np.asarray(obs["proprio"]), dtype=torch.float64)}

    def rollout(self, context: Mapping[str, Any], actions: torch.Tensor, seed: Any = 0) -> dict[str, torch.Tensor]:
        state = context["latents"][:, -1, :, 0, 0]  # [B, S]
        pred = self.oracle.make_rollout_fn({"state": state[:, None]})(actions)  # latents [B, s, H, S, 1, 1]
        states = pred["latents"][..., 0, 0]  # [B, s, H, S]
        proprio = torch.stack([self._proprio(s) for s in states.flatten(0, 2)]).view(*states.shape[:3], -1)
        return {"latents": pred["latents"], "proprio": proprio}

    def denormalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return proprio

    def _proprio(self, state: torch.Tensor) -> torch.Tensor:
        self.env.set_state(state.numpy())  # the env's own proprio of a state (no render)
        return torch.as_tensor(self.env._proprio(), dtype=torch.float64)


def env_proprio(wm, proprio: torch.Tensor | None) -> np.ndarray | None:
    """Model proprio [B, P] -> env units (what a policy reads)."""
    if proprio is None:
        return None
    denormalize = getattr(wm, "denormalize_proprio", None) or wm.module.denormalize_proprio
    return denormalize(proprio).double().numpy()


def sliding_context(latents: list, proprio: list, actions: list, frames: int, action_dim: int) -> dict[str, Any]:
    """The last ``frames`` frames (latents [B, Tc, C, h, w], proprio [B, Tc, P] | None) and the
    ``action_dim``-wide actions between them [B, Tc-1, Aw]; before there are enough, the first
    frame is repeated with zero actions (as ``make_context`` does for real observations)."""
    b, pad = latents[0].shape[0], max(0, frames - len(latents))
    lat = [latents[0]] * pad + latents[-frames:]
    pro = None if proprio[0] is None else [proprio[0]] * pad + proprio[-frames:]
    acts = ([torch.zeros(b, action_dim)] * pad + list(actions))[len(actions) + pad - (frames - 1):]
    return {"latents": torch.stack(lat, 1), "proprio": None if pro is None else torch.stack(pro, 1),
            "actions": torch.stack(acts, 1) if acts else torch.zeros(b, 0, action_dim)}


def imagine(wm, policies: Sequence[GoalPolicy], start: Mapping[str, Any], steps: int,
            seeds: Sequence[int]) -> dict[str, Any]:
    """Run ``policies`` (one per rollout) for ``steps`` planner steps inside ``wm``.

    start: the real start observations, pixels uint8 [B, H, W, 3], proprio [B, P], state [B, S]
    (only the oracle reads it). Step t's model noise comes from ``stream_seed(seeds[b], t)``.
    Returns latents [B, T+1, C, h, w] and proprio [B, T+1, P] | None (model units, frame 0 is
    the encoded start), actions [B, T, Aw], and ``observed``: the proprio each policy saw
    [B, T, P] (env units; the real start's, then the model's predictions).
    """
    if not wm.uses_proprio and any(p.needs_proprio for p in policies):
        raise ValueError("the world model predicts no proprio, but a policy acts on proprio")
    enc = wm.encode(start)
    latents, proprio, actions = [enc["latents"]], [enc["proprio"]], []
    seen = np.asarray(start["proprio"], dtype=np.float64)  # the real start, as the real run sees it
    pixels = np.asarray(start["pixels"])
    observed = []
    with torch.no_grad():
        for t in range(steps):
            observed.append(seen)
            obs = [{"proprio": None if seen is None else seen[b], "pixels": pixels[b]} for b in range(len(policies))]
            a = torch.as_tensor(np.stack([pi(o) for pi, o in zip(policies, obs)]))  # [B, Aw]
            actions.append(a)
            context = sliding_context(latents, proprio, actions[:-1], wm.context_frames, a.shape[1])
            pred = wm.rollout(context, a[:, None, None], seed=[stream_seed(s, t) for s in seeds])
            latents.append(pred["latents"][:, 0, 0])
            proprio.append(None if pred["proprio"] is None else pred["proprio"][:, 0, 0])
            seen = env_proprio(wm, proprio[-1])
            if any(p.needs_pixels for p in policies):  # decode only for policies that read frames
                pixels = wm.decode(latents[-1][:, None])[:, 0].numpy()
    return {"latents": torch.stack(latents, 1), "proprio": None if proprio[0] is None else torch.stack(proprio, 1),
            "actions": torch.stack(actions, 1), "observed": np.stack(observed, 1)}


def run_real(env, policies: Sequence[GoalPolicy], starts: Sequence[np.ndarray], steps: int) -> np.ndarray:
    """Run each policy in the real (FrameSkip) env from its start: states [B, T+1, S]
    after each planner step (the frames the world model predicts)."""
    out = []
    for policy, start in zip(policies, starts):
        obs, _ = env.reset(options={"state": start})
        states = [np.asarray(start, dtype=np.float64)]
        for _ in range(steps):
            obs, *_, info = env.step(policy({"proprio": obs["proprio"].astype(np.float64), "pixels": obs["pixels"]}))
            states.append(info["state"])
        out.append(np.stack(states))
    return np.stack(out)


# -- success detector: a state probe ---------------------------------------------------------
def probe_features(latents: torch.Tensor, proprio: torch.Tensor | None, features: str, pool: int) -> np.ndarray:
    """latents [N, C, h, w] (+ proprio [N, P]) -> features float64 [N, D]; latents average-pooled
    to at most ``pool`` x ``pool`` cells (a ridge over 384 x 16 x 16 DINO features is too big)."""
    if features not in PROBE_FEATURES:
        raise ValueError(f"probe.features must be one of {PROBE_FEATURES}, got {features!r}")
    parts = []
    if "latents" in features:
        x = latents.double()
        if max(x.shape[-2:]) > pool:
            x = torch.nn.functional.adaptive_avg_pool2d(x, (min(pool, x.shape[-2]), min(pool, x.shape[-1])))
        parts.append(x.flatten(1))
    if "proprio" in features:
        if proprio is None:
            raise ValueError(f"probe.features={features} needs proprio, but the world model has none")
        parts.append(proprio.double())
    return torch.cat(parts, 1).numpy()


@dataclass
class StateProbe:
    """Ridge regression from standardized features to the env state."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]
    weight: np.ndarray  # [D, S]
    bias: np.ndarray  # [S]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alpha: float) -> StateProbe:
        """x [N, D], y [N, S]; the primal or dual solve, whichever is smaller."""
        if not alpha > 0:
            raise ValueError(f"probe.alpha must be > 0, got {alpha!r}")
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)  # constant features stay 0
        z, bias = (x - mean) / scale, y.mean(0)
        if z.shape[1] <= z.shape[0]:
            weight = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (y - bias))
        else:
            weight = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(z.shape[0]), y - bias)
        return cls(mean, scale, weight, bias)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale @ self.weight + self.bias


def probe_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Per state dimension R^2 (None where the state never varies) and RMSE; mean R^2."""
    var = y.var(0)
    r2 = [None if v < 1e-12 else float(1 - ((p - t) ** 2).mean() / v) for p, t, v in zip(pred.T, y.T, var)]
    known = [r for r in r2 if r is not None]
    return {"r2": r2, "r2_mean": float(np.mean(known)) if known else None,
            "rmse": np.sqrt(((pred - y) ** 2).mean(0)).tolist(), "frames": len(y)}


def dataset_clips(path: str | Path, split: str, frames: int, frameskip: int, max_clips: int, seed: int,
                  val_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """Up to ``max_clips`` clips of ``frames`` frames of a split, drawn with ``seed``: pixels
    [N, T, H, W, 3], proprio [N, T, P], state [N, T, S], actions [N, T-1, Aw]."""
    from wmplan.data.dataset import ClipDataset

    ds = ClipDataset(path, frames, frameskip, split=split, val_fraction=val_fraction, seed=split_seed)
    rng = np.random.default_rng([seed, int(split == "val")])
    index = np.sort(rng.choice(len(ds), size=min(max_clips, len(ds)), replace=False))
    items = [ds[int(i)] for i in index]
    names = {"pixels": "pixels", "proprio": "proprio", "state": "states", "actions": "actions"}
    return {key: np.stack([it[src] for it in items]) for key, src in names.items()}


def probe_examples(wm, clips: Mapping[str, np.ndarray], source: str, seed: int,
                   batch: int = 256) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray]:
    """(latents [N, C, h, w], proprio [N, P] | None, true states [N, S]) of the clips' last frames:
    encoded from the real frame, or the model's one-step prediction of it from the frames
    before (the distribution the probe judges in closed loop)."""
    if source not in ("encoded", "predicted"):
        raise ValueError(f"probe.source must be 'encoded' or 'predicted', got {source!r}")
    lat, pro = [], []
    for i in range(0, len(clips["pixels"]), batch):
        part = {k: v[i:i + batch] for k, v in clips.items()}
        if source == "encoded":
            enc = wm.encode({k: part[k][:, -1] for k in ("pixels", "proprio", "state")})
            lat.append(enc["latents"])
            pro.append(enc["proprio"])
            continue
        enc = wm.encode({k: part[k][:, :-1] for k in ("pixels", "proprio", "state")})  # the context frames
        context = {**enc, "actions": torch.as_tensor(part["actions"][:, :-1])}
        actions = torch.as_tensor(part["actions"][:, -1:])[:, None]  # [b, 1, 1, Aw]
        with torch.no_grad():
            pred = wm.rollout(context, actions, seed=[stream_seed(seed, i + j) for j in range(len(actions))])
        lat.append(pred["latents"][:, 0, 0])
        pro.append(None if pred["proprio"] is None else pred["proprio"][:, 0, 0])
    return torch.cat(lat), None if pro[0] is None else torch.cat(pro), clips["state"][:, -1]


def fit_probe(wm, cfg: Mapping[str, Any], data: str | Path, frameskip: int,
              seed: int) -> tuple[StateProbe, dict[str, Any]]:
    """Fit the probe on the train split of ``data`` and measure it on the val split."""
    fit = {}
    for split in ("train", "val"):
        clips = dataset_clips(data, split, wm.context_frames + 1, frameskip, cfg["max_frames"], seed,
                              cfg["val_fraction"], cfg["split_seed"])
        latents, proprio, states = probe_examples(wm, clips, cfg["source"], stream_seed(seed, int(split == "val")))
        fit[split] = (probe_features(latents, proprio, cfg["features"], cfg["pool"]), states)
    probe = StateProbe.fit(*fit["train"], alpha=cfg["alpha"])
    train, val = (probe_metrics(probe.predict(x), y) for x, y in (fit["train"], fit["val"]))
    return probe, {"train": train, "val": val, "features": cfg["features"], "source": cfg["source"],
                   "dims": int(fit["train"][0].shape[1])}


def probed_states(probe: StateProbe, imagined: Mapping[str, Any], cfg: Mapping[str, Any]) -> np.ndarray:
    """The probe's states [B, T+1, S] along imagined rollouts."""
    lat, pro = imagined["latents"], imagined["proprio"]
    b, t = lat.shape[:2]
    x = probe_features(lat.flatten(0, 1), None if pro is None else pro.flatten(0, 1), cfg["features"], cfg["pool"])
    return probe.predict(x).reshape(b, t, -1)


# -- scoring and rankings ------------------------------------------------------------------
def step_successes(env, states: np.ndarray, goals: Sequence[np.ndarray]) -> np.ndarray:
    """bool [B, T]: ``evaluate`` after each planner step (the start, index 0, is not judged)."""
    inner = env.unwrapped
    return np.array([[inner.evaluate(s, g)["success"] for s in run[1:]] for run, g in zip(states, goals)])


def judge(successes: np.ndarray, rule: str) -> np.ndarray:
    """Per rollout [B]: success at the last planner step, or at any."""
    if rule not in SUCCESS_RULES:
        raise ValueError(f"success_rule must be one of {SUCCESS_RULES}, got {rule!r}")
    return successes[:, -1] if rule == "last" else successes.any(1)


def rank_agreement(estimated: Sequence[float], real: Sequence[float]) -> dict[str, Any]:
    """How well the estimated success rates rank the policies as the real ones do.

    Spearman's rho and Kendall's tau-b (None where either side is constant: undefined), the
    ranks (1 = best, ties share their mean rank) and SIMPLER's mean maximum rank violation:
    MMRV = mean_i max_j |real_i - real_j| * [estimated and real order i, j differently].
    """
    from scipy.stats import kendalltau, rankdata, spearmanr

    est, rl = np.asarray(estimated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if est.shape != rl.shape or est.ndim != 1 or len(est) < 2:
        raise ValueError(f"need two equally long lists of at least 2 success rates, got {len(est)} and {len(rl)}")
    constant = np.ptp(est) == 0 or np.ptp(rl) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = None if constant else float(spearmanr(est, rl).statistic)
        tau = None if constant else float(kendalltau(est, rl).statistic)
    flipped = (est[:, None] < est[None]) != (rl[:, None] < rl[None])  # [N, N]
    mmrv = float((np.abs(rl[:, None] - rl[None]) * flipped).max(1).mean())
    return {"spearman_rho": rho, "kendall_tau": tau, "mmrv": mmrv,
            "rank_estimated": rankdata(-est).tolist(), "rank_real": rankdata(-rl).tolist()}


# -- the evaluation ------------------------------------------------------------------------
def load_world_model(cfg: DictConfig, env):
    """``oracle`` or a checkpoint (path, ``pretrained:<name>``), checked against the env."""
    if cfg.world_model == "oracle":
        return OracleWorldModel(env)
    from wmplan.planners.evaluate import checked_world_model

    return checked_world_model(cfg)


def check_config(cfg: DictConfig) -> None:
    check_numbers(cfg, {"starts": 1, "seed": 0, "budget_env_steps": 1, "probe.max_frames": 2, "probe.pool": 1},
                  floats=("probe.alpha",))
    if cfg.budget_env_steps % cfg.env.frameskip:
        raise ValueError(f"budget_env_steps={cfg.budget_env_steps} must be a multiple of frameskip={cfg.env.frameskip}")
    judge(np.zeros((1, 1), bool), cfg.success_rule)
    for key, allowed in (("features", PROBE_FEATURES), ("source", ("encoded", "predicted"))):
        if cfg.probe[key] not in allowed:
            raise ValueError(f"probe.{key} must be one of {allowed}, got {cfg.probe[key]!r}")
    policy_specs(OmegaConf.to_container(cfg.policies, resolve=True))
    from wmplan.data.dataset import read_info

    info = read_info(cfg.data)
    for key, want in (("env_id", cfg.env.id), ("resolution", cfg.env.resolution)):
        if str(info[key]) != str(want):
            raise ValueError(f"probe dataset {cfg.data} has {key} {info[key]}, but the env has {want}")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the real-to-sim evaluation of ``cfg``; returns the results written to ``out_dir``."""
    from wmplan.envs import make
    from wmplan.provenance import provenance

    check_config(cfg)
    torch.manual_seed(cfg.seed)
    env = make(cfg.env.id, frameskip=cfg.env.frameskip, resolution=cfg.env.resolution, **cfg.env.env_kwargs)
    specs = policy_specs(OmegaConf.to_container(cfg.policies, resolve=True))
    episodes = sample_episodes(env, cfg.starts, cfg.seed)
    n, steps = len(episodes), cfg.budget_env_steps // cfg.env.frameskip
    build_policies(specs, env, episodes, cfg.seed)  # fail on a bad policy before any model work
    wm = load_world_model(cfg, env)
    timing, t0 = {}, time.perf_counter()
    probe, probe_info = fit_probe(wm, cfg.probe, cfg.data, cfg.env.frameskip, cfg.seed)
    timing["probe_s"] = time.perf_counter() - t0

    starts = [s for _ in specs for s, _ in episodes]  # policy-major, as build_policies
    goals = [g for _ in specs for _, g in episodes]
    seeds = [stream_seed(stream_seed(cfg.seed, i), label_id(label)) for label in specs for i in range(n)]
    start_obs = start_observations(env, starts)
    t0 = time.perf_counter()
    imagined = imagine(wm, build_policies(specs, env, episodes, cfg.seed), start_obs, steps, seeds)
    timing["imagine_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    real_states = run_real(env, build_policies(specs, env, episodes, cfg.seed), starts, steps)
    timing["real_s"] = time.perf_counter() - t0
    est_states = probed_states(probe, imagined, cfg.probe)
    est_steps, real_steps = step_successes(env, est_states, goals), step_successes(env, real_states, goals)
    env.close()
    results = summarize(specs, n, est_steps, real_steps, cfg.success_rule)
    results.update(probe=probe_info, timing=timing, config=OmegaConf.to_container(cfg, resolve=True),
                   checkpoint={"path": None if cfg.world_model == "oracle" else str(cfg.world_model),
                               "sha256": wm.checkpoint_hash},
                   provenance=provenance(precision=wm.precision),
                   records=rollout_records(specs, episodes, imagined, est_states, real_states, est_steps, real_steps))
    write_json_atomic(Path(cfg.out_dir) / "results.json", results, indent=2, sort_keys=False, default=str)
    return results


def start_observations(env, starts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """The real start observations: pixels [B, H, W, 3], proprio [B, P], state [B, S]."""
    obs = [env.reset(options={"state": s})[0] for s in starts]
    return {"pixels": np.stack([o["pixels"] for o in obs]), "proprio": np.stack([o["proprio"] for o in obs]),
            "state": np.stack([np.asarray(s, dtype=np.float64) for s in starts])}


def summarize(specs: Mapping[str, Any], n: int, est_steps: np.ndarray, real_steps: np.ndarray,
              rule: str) -> dict[str, Any]:
    """Per policy success rates (the rule's, and both rules'), rankings and their agreement."""
    per_policy = {}
    for p, label in enumerate(specs):
        rows = slice(p * n, (p + 1) * n)
        per_policy[label] = {
            "spec": specs[label],
            "estimated_success": float(judge(est_steps[rows], rule).mean()),
            "real_success": float(judge(real_steps[rows], rule).mean()),
            **{f"{side}_success_{r}": float(judge(s[rows], r).mean())
               for r in SUCCESS_RULES for side, s in (("estimated", est_steps), ("real", real_steps))},
            "rollout_agreement": float((judge(est_steps[rows], rule) == judge(real_steps[rows], rule)).mean()),
        }
    est = [v["estimated_success"] for v in per_policy.values()]
    agreement = rank_agreement(est, [v["real_success"] for v in per_policy.values()])
    for v, re, rr in zip(per_policy.values(), agreement.pop("rank_estimated"), agreement.pop("rank_real")):
        v.update(rank_estimated=re, rank_real=rr)
    return {"success_rule": rule, "starts": n, "policies": per_policy, **agreement}


def rollout_records(specs, episodes, imagined, est_states, real_states, est_steps, real_steps) -> list[dict]:
    """Per rollout: policy, start index, start and goal, actions, probed and real states and
    the per-step successes of both."""
    labels = [label for label in specs for _ in episodes]
    n = len(episodes)
    return [{"policy": labels[b], "start": b % n, "start_state": episodes[b % n][0].tolist(),
             "goal_state": episodes[b % n][1].tolist(), "actions": imagined["actions"][b].tolist(),
             "estimated_states": est_states[b].tolist(), "real_states": real_states[b].tolist(),
             "estimated_successes": est_steps[b].tolist(), "real_successes": real_steps[b].tolist()}
            for b in range(len(labels))]


def table(results: Mapping[str, Any]) -> str:
    """The printed summary: one row per policy, then the rank agreement and the probe."""
    rule = results["success_rule"]
    when = "the last" if rule == "last" else "any"
    lines = [f"{'policy':<18} {'estimated':>9} {'real':>6} {'rank est/real':>14}   "
             f"(success at {when} planner step, {results['starts']} starts)"]
    for label, v in results["policies"].items():
        lines.append(f"{label:<18} {v['estimated_success']:>9.2f} {v['real_success']:>6.2f} "
                     f"{v['rank_estimated']:>6.1f}/{v['rank_real']:<6.1f}")

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"

    val = results["probe"]["val"]
    lines.append(f"Spearman rho {fmt(results['spearman_rho'])}, Kendall tau {fmt(results['kendall_tau'])}, "
                 f"MMRV {results['mmrv']:.3f}")
    probe = results["probe"]
    lines.append(f"probe ({probe['features']}, {probe['source']} frames): val R^2 {fmt(val['r2_mean'])}, "
                 f"RMSE per state dim {[round(x, 4) for x in val['rmse']]} ({val['frames']} frames)")
    return "\n".join(lines)


@hydra.main(config_path=str(CONFIG_DIR), config_name="real_to_sim", version_base="1.3")
@reports_user_errors("wmplan-real-to-sim")
def main(cfg: DictConfig) -> None:
    print(table(evaluate(cfg)))


if __name__ == "__main__":
    main()
