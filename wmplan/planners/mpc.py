"""The MPC loop over real environments, and its outputs (results.json, videos, a summary line).

``run_mpc`` plans for B episodes at once, executes the first ``execute_k`` planner actions of
each plan in the real env, and replans from the new real observation, until a fixed budget
of env steps is spent. The planner only ever sees the world model; success is judged by
``env.evaluate`` on the executed states alone, and the run never stops early.

The main number is DINO-WM's *success at the end*: the last executed state succeeds
(``EpisodeRecord.success``). ``success_any`` (some executed step succeeded) is recorded too.

Given a ``decode_fn``, the run also keeps, for the episodes in ``predict_episodes``, the
model's decoded prediction of each executed step (``EpisodeRecord.predicted_frames``): the
videos show it next to what really happened.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from wmplan.atomic import write_json_atomic
from wmplan.planners.base import Goal, Objective, Planner, RolloutFn
from wmplan.seeding import stream_seed
from wmplan.video import labelled_panels, save_video

if TYPE_CHECKING:
    import gymnasium as gym

log = logging.getLogger(__name__)

# obs batch (pixels uint8 [N,H,W,3], proprio float32 [N,P], state float64 [N,S]) -> goal-like dict
EncodeFn = Callable[[dict[str, torch.Tensor]], Goal]
# context (latents [B,T,C,h,w], proprio [B,T,P] | None, actions [B,T-1,Aw], state [B,T,S],
# seeds [B] for the model's sampling noise) -> rollout
MakeRolloutFn = Callable[[dict[str, torch.Tensor | None]], RolloutFn]
# predicted latents [B, T, C, h, w] -> uint8 frames [B, T, H, W, 3] (``WorldModel.decode``)
DecodeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpisodeRecord:
    """One episode; per-step lists are over executed *inner* env steps."""

    start_state: np.ndarray
    goal_state: np.ndarray
    goal_image: np.ndarray  # uint8 [H, W, 3]
    episode: int = 0  # the episode's index in the evaluation (its randomness stream)
    frames: list[np.ndarray] = field(default_factory=list)  # observation after each planner step (+ start)
    actions: list[np.ndarray] = field(default_factory=list)  # executed planner actions [Aw]
    distances: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    plan_times: list[float] = field(default_factory=list)  # seconds per replan (shared by the batch)
    predicted_frames: list[np.ndarray] = field(default_factory=list)  # the model's view of frames[1:], if recorded

    @property
    def success(self) -> bool:
        return self.successes[-1]

    @property
    def success_any(self) -> bool:
        return any(self.successes)

    @property
    def steps(self) -> int:
        return len(self.distances)

    def to_json(self) -> dict[str, Any]:
        return {
            "episode": self.episode,
            "success": self.success,
            "success_any": self.success_any,
            "final_distance": self.distances[-1],
            "min_distance": min(self.distances),
            "steps": self.steps,
            "plan_times": self.plan_times,
            "distances": self.distances,
            "successes": self.successes,
            "actions": [a.tolist() for a in self.actions],
            "start_state": self.start_state.tolist(),
            "goal_state": self.goal_state.tolist(),
        }


def sample_episodes(env: gym.Env, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (start, goal) pairs from the env's evaluation distribution, drawn from ``seed`` alone."""
    rng = np.random.default_rng(seed)
    return [env.unwrapped.sample_start_and_goal(rng) for _ in range(n)]


def run_mpc(
    env: gym.Env,
    planner: Planner,
    objective: Objective,
    encode_fn: EncodeFn,
    make_rollout_fn: MakeRolloutFn,
    episodes: Sequence[tuple[np.ndarray, np.ndarray]],
    budget_env_steps: int = 50,
    execute_k: int | None = None,
    horizon: int = 5,
    history: int = 1,
    seed: int = 0,
    budget_horizon: bool = True,
    episode_ids: Sequence[int] | None = None,
    progress: bool = False,
    decode_fn: DecodeFn | None = None,
    predict_episodes: Collection[int] = (),
) -> list[EpisodeRecord]:
    """Plan-execute-replan for every (start_state, goal_state) in ``episodes``, batched.

    ``env`` is a GoalEnv, possibly FrameSkip-wrapped: one planner action is one wrapped step
    of ``frameskip`` inner env steps. ``budget_env_steps`` counts inner steps and must be a
    multiple of the frameskip. ``execute_k`` planner actions run per replan (default: the
    whole horizon, as in DINO-WM); the rest of the plan, shifted and padded with zeros,
    warm-starts the next replan. The context holds the last ``history`` real observations
    (repeated at the start, with zero actions between the repeats). With ``budget_horizon``
    a replan never plans past the budget (see ``plan_horizons``).

    Randomness is per episode: episode ``episode_ids[b]`` (default: its position) draws its
    planner noise from its own generator and hands the world model its own seed per replan
    (``context["seeds"]``), so its plan is the same alone, batched, or in another shard.
    ``progress`` shows a bar over replans with an ETA.

    With ``decode_fn``, episodes whose id is in ``predict_episodes`` get ``predicted_frames``
    (see ``record_predictions``); the executed plans are the same with or without them.
    """
    frameskip = env.action_space.shape[0] // env.unwrapped.action_space.shape[0]
    execute_k = horizon if execute_k is None else execute_k
    check_mpc_args(episodes, budget_env_steps, frameskip, execute_k, horizon, history)
    B, Aw = len(episodes), env.action_space.shape[0]
    episode_ids = list(range(B)) if episode_ids is None else [int(i) for i in episode_ids]
    if len(episode_ids) != B:
        raise ValueError(f"episode_ids has {len(episode_ids)} entries for {B} episodes")
    streams = [stream_seed(seed, i) for i in episode_ids]
    generators = [torch.Generator().manual_seed(s) for s in streams]
    watched = [b for b, i in enumerate(episode_ids) if i in predict_episodes] if decode_fn else []

    goal_obs = [observe(env, goal) for _, goal in episodes]
    goal = encode_fn(obs_batch(goal_obs))
    records = [EpisodeRecord(np.asarray(s), np.asarray(g), o["pixels"], i)
               for (s, g), o, i in zip(episodes, goal_obs, episode_ids)]
    obs_steps = [obs_batch([observe(env, s) for s, _ in episodes])]  # one batch per planner step
    act_steps: list[torch.Tensor] = []  # executed planner actions [B, Aw] per step
    for record, pixels in zip(records, obs_steps[0]["pixels"].numpy()):
        record.frames.append(pixels)

    init, remaining = None, budget_env_steps // frameskip
    horizons = plan_horizons(remaining, execute_k, horizon, budget_horizon)
    bar = tqdm(total=len(horizons), desc=f"MPC {B} episodes", unit="replan", disable=not progress, leave=False)
    for replan, h in enumerate(horizons, start=1):
        t0 = time.perf_counter()
        context = make_context(encode_fn, obs_steps, act_steps, history, Aw)
        context["seeds"] = torch.tensor([stream_seed(s, replan) for s in streams])  # the model's noise, per episode
        rollout_fn = make_rollout_fn(context)
        init = None if init is None else init[:, :h]
        plan = planner.plan(rollout_fn, objective, goal, B, h, Aw, init, generators, frameskip=frameskip)
        elapsed = time.perf_counter() - t0
        n = min(execute_k, remaining)
        if watched:
            record_predictions(rollout_fn, plan.actions, n, decode_fn, watched, records)
        actions = plan.actions[:, :n].detach().cpu().float()  # [B, n, Aw]
        state = obs_steps[-1]["state"].numpy()
        executed = [execute(env, r, s, a.numpy(), elapsed) for r, s, a in zip(records, state, actions)]  # [B][n]
        obs_steps += [obs_batch([episode[i] for episode in executed]) for i in range(n)]
        act_steps += list(actions.unbind(dim=1))
        init = torch.cat([plan.actions[:, n:], torch.zeros_like(plan.actions[:, :n])], dim=1)
        remaining -= n
        log.info(progress_line(records, replan, len(horizons), elapsed))
        bar.set_postfix_str(f"{sum(r.successes[-1] for r in records)}/{B} at the goal")
        bar.update()
    bar.close()
    return records


def record_predictions(rollout_fn: RolloutFn, plans: torch.Tensor, n: int, decode_fn: DecodeFn,
                       watched: Sequence[int], records: Sequence[EpisodeRecord]) -> None:
    """Append to the ``watched`` episodes' records the decoded prediction of the ``n`` steps of
    ``plans`` [B, H, Aw] about to be executed.

    The chosen plans are rolled out once more, one candidate per episode: the model draws
    its noise from the replan's per-episode seeds alone, shared by all candidates, so this
    is the prediction the planner scored. The planner's generators are not touched, so the
    run's results do not change.
    """
    with torch.no_grad():
        latents = rollout_fn(plans.detach()[:, None])["latents"][watched, 0, :n]  # [b, n, C, h, w]
        frames = decode_fn(latents).cpu().numpy()  # [b, n, H, W, 3]
    for b, predicted in zip(watched, frames):
        records[b].predicted_frames.extend(predicted)


def plan_horizons(budget_steps: int, execute_k: int, horizon: int, budget_horizon: bool = True) -> list[int]:
    """Planner steps planned at each replan for a budget of ``budget_steps`` planner steps.

    Success is judged at the end of the budget, so with ``budget_horizon`` a replan whose
    remaining budget is shorter than ``horizon`` plans only to the budget's end: its objective
    then scores the state that is actually judged, not one the run never reaches. With
    ``execute_k == horizon`` and a budget that is a multiple of it, nothing changes.
    """
    return [min(horizon, remaining) if budget_horizon else horizon for remaining in range(budget_steps, 0, -execute_k)]


def progress_line(records: Sequence[EpisodeRecord], replan: int, replans: int, seconds: float) -> str:
    """One line per replan, so that a long CPU run shows where it is."""
    now = sum(r.successes[-1] for r in records)
    return (f"replan {replan}/{replans} ({seconds:.1f} s): {records[0].steps} env steps, "
            f"{now}/{len(records)} at the goal now, {sum(r.success_any for r in records)} reached it")


def check_mpc_args(episodes, budget_env_steps, frameskip, execute_k, horizon, history) -> None:
    if not episodes:
        raise ValueError("run_mpc needs at least one (start_state, goal_state) episode")
    if budget_env_steps < frameskip or budget_env_steps % frameskip:
        raise ValueError(f"budget_env_steps={budget_env_steps} must be a positive multiple of frameskip={frameskip}")
    if not 1 <= execute_k <= horizon:
        raise ValueError(f"execute_k must be in [1, horizon={horizon}], got {execute_k}")
    if history < 1:
        raise ValueError(f"history must be >= 1, got {history}")


def observe(env: gym.Env, state: np.ndarray) -> dict[str, np.ndarray]:
    """The observation at ``state`` (pixels as ``env.render_state(state)``), with the state itself."""
    obs, _ = env.reset(options={"state": state})
    return {**obs, "state": np.asarray(state, dtype=np.float64)}


def obs_batch(obs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack per-episode observations: pixels uint8 [N,H,W,3], proprio float32 [N,P], state float64 [N,S]."""
    return {
        "pixels": torch.from_numpy(np.stack([o["pixels"] for o in obs])),
        "proprio": torch.from_numpy(np.stack([o["proprio"] for o in obs]).astype(np.float32)),
        "state": torch.from_numpy(np.stack([o["state"] for o in obs]).astype(np.float64)),
    }


def make_context(
    encode_fn: EncodeFn,
    obs_steps: list[dict[str, torch.Tensor]],
    act_steps: list[torch.Tensor],
    history: int,
    action_dim: int,
) -> dict[str, torch.Tensor | None]:
    """The last ``history`` real observations, encoded, and the actions between them.

    Before ``history`` observations exist, the first is repeated with zero actions between.
    Returns latents [B,T,C,h,w], proprio [B,T,P] | None, actions [B,T-1,Aw] (T = history), and
    the real simulator ``state`` [B,T,S], which only oracle models may use.
    """
    B = obs_steps[0]["pixels"].shape[0]
    pad = max(0, history - len(obs_steps))
    obs = [obs_steps[0]] * pad + obs_steps[-history:]
    padded_acts = [torch.zeros(B, action_dim)] * pad + act_steps
    acts = padded_acts[len(padded_acts) - (history - 1) :]
    stacked = {key: torch.stack([o[key] for o in obs], dim=1) for key in obs[0]}  # [B, T, ...]
    enc = encode_fn({key: x.flatten(0, 1) for key, x in stacked.items()})  # [B*T, ...]
    proprio = enc.get("proprio")
    return {
        "state": stacked["state"],
        "latents": enc["latents"].view(B, history, *enc["latents"].shape[1:]),
        "proprio": None if proprio is None else proprio.view(B, history, *proprio.shape[1:]),
        "actions": torch.stack(acts, dim=1) if acts else torch.zeros(B, 0, action_dim),
    }


def execute(
    env: gym.Env, record: EpisodeRecord, state: np.ndarray, actions: np.ndarray, plan_time: float
) -> list[dict[str, np.ndarray]]:
    """Run ``actions`` [n, Aw] from ``state`` in the real env, logging each inner step into ``record``."""
    env.reset(options={"state": state})
    record.plan_times.append(plan_time)
    observations = []
    for action in actions:
        obs, _, _, _, info = env.step(action)
        inner = info.get("states", info["state"][None])  # [k, S] with FrameSkip, else [1, S]
        for s in inner:
            result = env.unwrapped.evaluate(s, record.goal_state)
            record.distances.append(float(result["distance"]))
            record.successes.append(bool(result["success"]))
        record.frames.append(obs["pixels"])
        record.actions.append(np.asarray(action))
        observations.append({**obs, "state": info["state"]})
    return observations


# -- outputs ---------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate: 50 episodes cannot separate 0.94 from 0.96."""
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate numbers of records in their JSON form (``EpisodeRecord.to_json``);
    ``success_rate`` is success at the end (the main number)."""
    plan_times = [t for r in records[:1] for t in r["plan_times"]]  # replans are shared by the batch
    successes = sum(r["success"] for r in records)
    return {
        "episodes": len(records),
        "success_rate": float(np.mean([r["success"] for r in records])),
        "success_ci95": wilson_interval(successes, len(records)),
        "success_rate_any": float(np.mean([r["success_any"] for r in records])),
        "mean_final_distance": float(np.mean([r["final_distance"] for r in records])),
        "mean_min_distance": float(np.mean([r["min_distance"] for r in records])),
        "replans": len(plan_times),
        "plan_time_mean_s": float(np.mean(plan_times)),
        "plan_time_max_s": float(np.max(plan_times)),
    }


def write_results(
    path: str | os.PathLike,
    records: Sequence[EpisodeRecord],
    config: Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    checkpoint_hash: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write results.json atomically (temp file + rename): summary, config, checkpoint,
    provenance (``wmplan.provenance``: commit, versions, machine, precision), episodes.

    ``checkpoint_hash`` is the world model's (``WorldModel.checkpoint_hash``, a sha256; an ensemble's
    members' joined by "+").
    """
    rows = [r.to_json() for r in records]
    results = {
        **summarize(rows),
        "config": dict(config),
        "checkpoint": {"path": None if checkpoint is None else str(checkpoint), "sha256": checkpoint_hash},
        "provenance": None if provenance is None else dict(provenance),
        "records": rows,
    }
    write_json_atomic(path, results, indent=2, sort_keys=False, default=str)
    return results


def save_videos(
    records: Sequence[EpisodeRecord], out_dir: str | os.PathLike, fps: int = 4, fmt: str = "gif"
) -> list[Path]:
    """One video per episode (.gif or .mp4) of ``episode_video``'s frames."""
    if fmt not in ("gif", "mp4"):
        raise ValueError(f"video format must be 'gif' or 'mp4', got {fmt!r}")
    return [save_video(Path(out_dir) / f"episode_{r.episode:03d}_{'success' if r.success else 'failure'}.{fmt}",
                       episode_video(r), fps) for r in records]


def episode_video(record: EpisodeRecord, min_size: int = 256) -> np.ndarray:
    """Labelled panels, upscaled to at least ``min_size`` px: executed | predicted (where
    recorded) | goal, one frame per planner step, with a caption line: uint8 [T, H, W, 3].

    The predicted panel starts from the real start frame, the model's context.
    """
    executed = np.stack(record.frames)  # [T, H, W, 3]: the start, then each planner step
    panels = {"executed": executed}
    if record.predicted_frames:
        panels["predicted"] = np.stack([record.frames[0], *record.predicted_frames])
    panels["goal"] = np.broadcast_to(record.goal_image, executed.shape)
    return labelled_panels(panels, video_captions(record), min_size)


def video_captions(record: EpisodeRecord) -> list[str]:
    """Per video frame: episode, env step, distance to the goal, whether it was reached so far."""
    k = record.steps // (len(record.frames) - 1)  # inner env steps per planner step
    lines = [f"episode {record.episode} | env step 0/{record.steps} | start"]
    for step in range(k, record.steps + 1, k):
        reached = "yes" if any(record.successes[:step]) else "no"
        lines.append(f"episode {record.episode} | env step {step}/{record.steps} | "
                     f"distance {record.distances[step - 1]:.3g} | success so far: {reached}")
    return lines


def summary_line(results: Mapping[str, Any], label: str = "") -> str:
    """One line from a results dict (``write_results``, ``merge_shards``)."""
    s = results
    return (
        f"{label + ': ' if label else ''}success {s['success_rate']:.2f} [95% CI {s['success_ci95'][0]:.2f}-"
        f"{s['success_ci95'][1]:.2f}] (any step {s['success_rate_any']:.2f}) "
        f"| final dist {s['mean_final_distance']:.3g} (min {s['mean_min_distance']:.3g}) "
        f"| {s['plan_time_mean_s']:.2f} s/replan x {s['replans']} | {s['episodes']} episodes"
    )
