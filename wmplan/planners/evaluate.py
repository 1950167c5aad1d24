"""``wmplan-plan``: goal-conditioned MPC evaluation of a world model (or a baseline).

    wmplan-plan env=wall world_model=outputs/train/wall/checkpoints/latest.ckpt episodes=50
    wmplan-plan env=wall world_model=oracle planner=cem_dino_wm     # true simulator: the upper bound
    wmplan-plan env=wall world_model=random                          # random actions: the lower bound
    wmplan-plan env=rope world_model=noop                            # zero actions: doing nothing

Writes ``results.json`` (success rate, distances, per-episode records, planning time per
replan, config, checkpoint hash), videos of the first episodes (executed | predicted by the
model, where its codec decodes | goal), ``report.html`` (tables, plots, the videos) and prints
a one-line summary. ``episodes_shard=i/n`` plans one shard of the episodes (``shards``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from wmplan.cli import check_numbers, reports_user_errors
from wmplan.config_dir import CONFIG_DIR as _CONFIG_DIR
from wmplan.envs import make
from wmplan.hardware import tune_cpu_allocator
from wmplan.jepa_world_model import ENSEMBLE_SEPARATOR, PREFIX as JEPA_PREFIX, load_jepa_world_model
from wmplan.planners import build_objective, build_planner
from wmplan.planners.base import GaussianPlanner
from wmplan.planners.mpc import plan_horizons, run_mpc, sample_episodes, save_videos, summary_line, write_results
from wmplan.planners.oracle import EnvDistance, OracleModel
from wmplan.planners.shards import parse_shard, results_name, shard_episode_ids
from wmplan.provenance import provenance
from wmplan.report import write_evaluation_report

CONFIG_DIR = str(_CONFIG_DIR)  # wmplan/configs, as the absolute string hydra.main needs
BASELINES = ("oracle", "random", "noop")


def dataset_goals(path: str, n: int, offset: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """DINO-WM's dataset goals: (state t, state t + offset) from validation episodes."""
    from wmplan.data.dataset import ClipDataset

    pairs = ClipDataset(path, num_frames=2, frameskip=offset, split="val", seed=0)
    if len(pairs) == 0:
        raise ValueError(f"dataset {path} has no validation window of {offset} steps for goals")
    idx = np.random.default_rng(seed).choice(len(pairs), size=n, replace=len(pairs) < n)
    return [(pairs[int(i)]["states"][0], pairs[int(i)]["states"][1]) for i in idx]


def episodes_for(cfg: DictConfig, env) -> list[tuple[np.ndarray, np.ndarray]]:
    if cfg.goals.source == "env":
        return sample_episodes(env, cfg.episodes, cfg.seed)
    if cfg.goals.source == "dataset":
        return dataset_goals(cfg.goals.dataset, cfg.episodes, cfg.goals.offset, cfg.seed)
    raise ValueError(f"goals.source must be 'env' or 'dataset', got {cfg.goals.source!r}")


def context_history(cfg: DictConfig, wm: Any) -> int:
    """Real observations in the planning context: the model's context frames, read from the
    checkpoint; an explicit ``history`` must agree. Baselines see the current state (1)."""
    if wm is None:
        return 1 if cfg.history is None else int(cfg.history)
    if cfg.history is not None and int(cfg.history) != wm.context_frames:
        raise ValueError(f"history={cfg.history} contradicts checkpoint {cfg.world_model}, trained with "
                         f"diffusion.context_frames={wm.context_frames} (leave history unset to read it)")
    return wm.context_frames


def checked_world_model(cfg: DictConfig):
    """The ``WorldModel`` of checkpoint ``cfg.world_model`` (sampler, chunk size and precision
    from ``cfg``), refused when it was trained on another env id, frameskip or resolution."""
    from wmplan.rollout import WorldModel

    wm = WorldModel.from_checkpoint(cfg.world_model, sampler=OmegaConf.to_container(cfg.sampler),
                                   chunk_size=cfg.chunk_size, precision=cfg.precision)
    try:
        wm.check_env(cfg.env.id, cfg.env.frameskip, cfg.env.resolution)
    except ValueError as err:
        raise ValueError(f"checkpoint {cfg.world_model}: {err}") from None
    return wm


def model_and_objective(cfg: DictConfig, env) -> tuple[Any, Any, Any, Any]:
    """(encode_fn, make_rollout_fn, objective, WorldModel or None) for ``cfg.world_model``."""
    if cfg.world_model in BASELINES:
        oracle = OracleModel(env)
        return oracle.encode, oracle.make_rollout_fn, EnvDistance(env), None
    if str(cfg.world_model).startswith(JEPA_PREFIX):  # a JEPA folder's own predictor (wmplan.jepa_world_model)
        return jepa_model_and_objective(cfg, env)
    wm = checked_world_model(cfg)

    def make_rollout_fn(context):  # context["seeds"]: each episode's own noise (run_mpc)
        return lambda actions: wm.rollout(context, actions, seed=context["seeds"])

    if cfg.objective.get("pose_weight", 0) > 0:
        raise ValueError(f"{cfg.world_model} has no pose probe: objective.pose_weight needs a JEPA trained with "
                         "model.probe_dim (world_model=jepa:<folder>)")
    return wm.encode, make_rollout_fn, build_objective(cfg.objective), wm


def jepa_model_and_objective(cfg: DictConfig, env) -> tuple[Any, Any, Any, Any]:
    """``world_model=jepa:<folder>``: a folder written by ``wmplan-train-jepa``, checked against the env."""
    wm = load_jepa_world_model(cfg.world_model, precision=cfg.precision, pose_from_proprio=env.unwrapped.pose_from_proprio)
    if cfg.objective.get("proprio_weight", 0) > 0 and not wm.uses_proprio:
        raise ValueError(f"{cfg.world_model} predicts no proprio (trained with model.proprio_dim=0): "
                         "set objective.proprio_weight=0 (e.g. objective=dino_wm_maze)")
    if cfg.objective.get("pose_weight", 0) > 0 and not wm.has_pose_probe:
        raise ValueError(f"{cfg.world_model} has no pose probe (trained with model.probe_dim=0): "
                         "set objective.pose_weight=0")
    try:
        wm.check_env(cfg.env.id, cfg.env.frameskip, cfg.env.resolution)
    except ValueError as err:
        raise ValueError(f"JEPA model {cfg.world_model}: {err}") from None
    return wm.encode, wm.make_rollout_fn, build_objective(cfg.objective, env), wm


def prediction_decoder(wm: Any) -> Callable | None:
    """``wm.decode`` for the videos' predicted panel where the model's codec decodes; None for
    baselines and encode-only latents (DINO, JEPA)."""
    if wm is None:
        return None
    from wmplan.rollout import WorldModel

    return wm.decode if isinstance(wm, WorldModel) and wm.module.codec.can_decode else None


def report_name(shard: tuple[int, int] | None) -> str:
    """report.html, or report.shard-i-of-n.html beside a shard's results."""
    return "report" + results_name(shard).removeprefix("results").removesuffix(".json") + ".html"


def check_frame_weights(cfg: DictConfig) -> None:
    """Explicit frame weights fix the plan length: refuse a run whose plans would be shorter."""
    weights = cfg.objective.get("frame_weights")
    if weights is None or cfg.world_model in BASELINES:
        return
    k = cfg.horizon if cfg.execute_k is None else cfg.execute_k
    horizons = plan_horizons(cfg.budget_env_steps // cfg.env.frameskip, k, cfg.horizon, cfg.budget_horizon)
    if len(weights) != cfg.horizon or min(horizons, default=cfg.horizon) < cfg.horizon:
        raise ValueError(f"objective.frame_weights has {len(weights)} weights, but the plans are {sorted(set(horizons))} "
                         f"steps long (horizon={cfg.horizon}, execute_k={cfg.execute_k}, budget_horizon="
                         f"{cfg.budget_horizon}): give one weight per step, or use frames=last/all")


def scale_sigma(cfg: DictConfig, planner, wm) -> None:
    """``sigma_units=data``: the planner's sigma (``var_scale`` / ``noise_sigma``) counts in units of
    the world model's training-action std per dimension, recorded at training (DINO-WM samples
    in actions normalised by its dataset's statistics); ``action``: in raw action units."""
    if cfg.sigma_units not in ("action", "data"):
        raise ValueError(f"sigma_units must be 'action' or 'data', got {cfg.sigma_units!r}")
    if cfg.sigma_units == "action" or cfg.world_model in ("random", "noop"):  # those two sample no sigma
        return
    if wm is None:
        raise ValueError(f"sigma_units=data reads a trained world model's action statistics; world_model="
                         f"{cfg.world_model} has none (use sigma_units=action)")
    if wm.action_std is None:
        raise ValueError(f"{cfg.world_model} does not record its training actions' std (trained before wmplan "
                         "recorded it): retrain it, or use sigma_units=action with planner.var_scale")
    if not isinstance(planner, GaussianPlanner):
        raise ValueError(f"sigma_units=data scales a sampling sigma: the {type(planner).__name__} planner has "
                         "none (use cem or mppi)")
    planner.scale_sigma(wm.action_std)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the MPC protocol of ``cfg``; returns the results dict that was written."""
    check_numbers(cfg, {"episodes": 1, "seed": 0, "budget_env_steps": 1, "horizon": 1})
    torch.manual_seed(cfg.seed)
    tune_cpu_allocator()
    check_frame_weights(cfg)
    shard = parse_shard(cfg.episodes_shard)
    episode_ids = shard_episode_ids(cfg.episodes, shard)
    env = make(cfg.env.id, frameskip=cfg.env.frameskip, resolution=cfg.env.resolution, **cfg.env.env_kwargs)
    every_episode = episodes_for(cfg, env)  # all are drawn from the seed, so a shard's are the same
    episodes = [every_episode[i] for i in episode_ids]
    encode_fn, make_rollout_fn, objective, wm = model_and_objective(cfg, env)
    planner = build_planner({"name": cfg.world_model} if cfg.world_model in ("random", "noop") else cfg.planner)
    scale_sigma(cfg, planner, wm)
    records = run_mpc(
        env, planner, objective, encode_fn, make_rollout_fn, episodes,
        budget_env_steps=cfg.budget_env_steps, execute_k=cfg.execute_k, horizon=cfg.horizon,
        history=context_history(cfg, wm), seed=cfg.seed, budget_horizon=cfg.budget_horizon,
        episode_ids=episode_ids, progress=cfg.progress,
        decode_fn=prediction_decoder(wm), predict_episodes=range(cfg.videos),  # only the videos' episodes
    )
    out_dir = Path(cfg.out_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    checkpoint = None if cfg.world_model in BASELINES else cfg.world_model
    results = write_results(out_dir / results_name(shard), records, config, checkpoint, wm and wm.checkpoint_hash,
                            provenance(precision=wm and wm.precision))
    shown = [r for r in records if r.episode < cfg.videos]
    videos = dict(zip((r.episode for r in shown), save_videos(shown, out_dir / "videos", fmt=cfg.video_format)))
    if cfg.report:
        write_evaluation_report(out_dir / report_name(shard), results, videos)
    model_name = ENSEMBLE_SEPARATOR.join(Path(part).name for part in str(cfg.world_model).split(ENSEMBLE_SEPARATOR))
    label = f"{cfg.env.name} {model_name}" + ("" if shard is None else f" shard {cfg.episodes_shard}")
    results["summary"] = summary_line(results, label=label)
    env.close()
    return results


@hydra.main(config_path=CONFIG_DIR, config_name="plan", version_base="1.3")
@reports_user_errors("wmplan-plan")
def main(cfg: DictConfig) -> None:
    print(evaluate(cfg)["summary"])


if __name__ == "__main__":
    main()
