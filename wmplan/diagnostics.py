"""World-model diagnostics: prediction quality (docs/REFERENCE.md §3 protocol), action sensitivity, the
denoiser's error per noise level, and open-loop tracking of planner-style plans in the env.

    wm = WorldModel.from_checkpoint("outputs/train/wall/checkpoints/latest.ckpt")
    quality = prediction_quality(wm, "data/wall", sampler=reference_sampler(wm, steps=10))
    sens = action_sensitivity(wm, "data/wall")

Both use fixed validation clips (``validation_subset`` with ``seed``) from the checkpoint's
own frameskip, one context frame and ``predicted`` frames predicted from it.
``plan_tracking(wm)`` needs no dataset: it runs held-action plans in the true env.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data._utils.collate import default_collate

from wmplan.config_dir import config_path
from wmplan.data.dataset import ClipDataset, load_dataset_info, validation_subset
from wmplan.envs.config import EnvConfig
from wmplan.metrics import psnr, ssim
from wmplan.models.nanowm import shift_actions
from wmplan.models.sampling import SamplerConfig
from wmplan.planners.mpc import obs_batch, observe
from wmplan.rollout import WorldModel
from wmplan.video_metrics import RF_LABEL, VideoMetrics

REFERENCE_SAMPLER = config_path("sampler", "ddim_eval.yaml")
ROWS = ("model", "copy_last", "reconstruction")  # prediction_quality's rows


def reference_sampler(wm: WorldModel, steps: int | None = None, schedule: str | None = None) -> SamplerConfig:
    """The evaluation sampler of ``wmplan/configs/sampler/ddim_eval.yaml`` (250 DDIM steps,
    sequential; Euler for flow models), with optional ``steps`` / ``schedule`` overrides."""
    fields = OmegaConf.to_container(OmegaConf.load(REFERENCE_SAMPLER))
    if steps is not None:
        fields["steps"] = steps
    if schedule is not None:
        fields["schedule"] = schedule
    return SamplerConfig(**fields)


def validation_clips(wm: WorldModel, dataset_path: str | Path, n_clips: int, num_frames: int, seed: int) -> dict[str, Any]:
    """``n_clips`` fixed validation clips of ``num_frames`` frames at the checkpoint's frameskip, collated."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    info = load_dataset_info(dataset_path)
    if info["env_id"] != wm.env_id:
        raise ValueError(f"dataset {dataset_path} holds {info['env_id']}, the world model was trained on {wm.env_id}")
    dataset = ClipDataset(dataset_path, num_frames=num_frames, frameskip=wm.frameskip, split="val")
    subset = validation_subset(dataset, n_clips, seed)
    return default_collate([subset[i] for i in range(len(subset))])


def batches(clips: dict[str, Any], batch_size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, slice of every tensor in ``clips``) in chunks of ``batch_size`` clips."""
    n = len(clips["pixels"])
    for start in range(0, n, batch_size):
        yield start, {k: v[start : start + batch_size] for k, v in clips.items()}


def rollout_from_context(wm: WorldModel, batch: dict[str, Any], context: int, actions: torch.Tensor,
                         sampler: SamplerConfig | None, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encode a clip batch and predict frames ``context..`` under ``actions`` [b, H, Aw].

    Returns (the prediction: latents [b, H, C, h, w], proprio [b, H, P] | None; the whole
    clip's encoding: latents [b, T, C, h, w], proprio [b, T, P] | None).
    """
    enc = wm.encode({"pixels": batch["pixels"], "proprio": batch["proprio"]})
    latents, proprio = enc["latents"], enc["proprio"]
    ctx = {
        "latents": latents[:, :context],
        "proprio": None if proprio is None else proprio[:, :context],
        "actions": batch["actions"][:, : context - 1].float(),
    }
    pred = wm.rollout(ctx, actions[:, None].float(), sampler=sampler, seed=seed)
    return {k: None if v is None else v[:, 0] for k, v in pred.items()}, enc


def max_psnr(frames: torch.Tensor) -> float:
    """PSNR of uint8 images that differ by one level in one value: the cap for identical images,
    so that means over clips stay finite when a frame is predicted exactly."""
    h, w, c = frames.shape[-3:]
    return 10 * math.log10(255.0**2 * h * w * c)


def frame_scores(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (capped by ``max_psnr``) and SSIM of uint8 frames [b, H, h, w, 3]."""
    return {"psnr": psnr(pred, truth).clamp(max=max_psnr(truth)), "ssim": ssim(pred, truth)}


def summarize_scores(scores: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Mean over clips and predicted frames, and per predicted frame, of batched scores."""
    out: dict[str, Any] = {}
    for key in ("psnr", "ssim"):
        values = torch.cat([s[key] for s in scores])  # [n, H]
        out[key] = float(values.mean())
        out[f"{key}_per_frame"] = [float(v) for v in values.mean(0)]
    return out


def prediction_quality(wm: WorldModel, dataset_path: str | Path, n_clips: int = 256, context: int = 1,
                       predicted: int = 3, seed: int = 42, sampler: SamplerConfig | None = None,
                       batch_size: int = 64, video_metrics: VideoMetrics | None = None) -> dict[str, Any]:
    """PSNR / SSIM of decoded predictions on the predicted frames only (docs/REFERENCE.md §3 protocol).

    ``model``: predictions from ``context`` true frames and the true actions; ``copy_last``:
    the last context frame repeated, on the same frames; ``reconstruction``: the codec's
    decode(encode(truth)), the ceiling any latent prediction can reach. ``sampler`` defaults
    to ``reference_sampler(wm)``. With ``video_metrics`` (``wmplan.video_metrics``) the same
    frames also get rf-FVD / rf-FID (+ FVD, FID, LPIPS where configured) under ``video_metrics``.
    """
    if not wm.module.codec.can_decode:
        raise ValueError(f"codec {wm.module.codec.cfg.name!r} is encode-only: no pixel-space prediction quality")
    if context < 1 or predicted < 1:
        raise ValueError(f"need context >= 1 and predicted >= 1, got {context}, {predicted}")
    sampler = sampler or reference_sampler(wm)
    clips = validation_clips(wm, dataset_path, n_clips, context + predicted, seed)
    scores: dict[str, list] = {row: [] for row in ROWS}
    frames: dict[str, list] = {row: [] for row in (*ROWS, "truth")}  # uint8 [b, predicted, H, W, 3] per batch
    for start, batch in batches(clips, batch_size):
        pred, enc = rollout_from_context(wm, batch, context, batch["actions"][:, context - 1 :], sampler, seed + start)
        truth = batch["pixels"][:, context:]
        rows = {"model": wm.decode(pred["latents"]),
                "copy_last": batch["pixels"][:, context - 1 : context].expand_as(truth),
                "reconstruction": wm.decode(enc["latents"][:, context:])}
        for row, row_frames in rows.items():
            scores[row].append(frame_scores(row_frames, truth))
            if video_metrics is not None:
                frames[row].append(row_frames)
        if video_metrics is not None:
            frames["truth"].append(truth)
    out = {"clips": len(clips["pixels"]), "context_frames": context, "predicted_frames": predicted, "seed": seed,
           "sampler": dataclasses.asdict(sampler), **{row: summarize_scores(s) for row, s in scores.items()}}
    if video_metrics is not None:
        videos = {row: torch.cat(f) for row, f in frames.items()}
        truth_features = video_metrics.features(videos["truth"])
        out["video_metrics"] = {"label": RF_LABEL, "rf_seed": video_metrics.rf_seed, **{
            row: video_metrics(videos[row], videos["truth"], truth_features=truth_features) for row in ROWS}}
    return out


def action_variants(actions: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Ground-truth, zero and seeded uniform [-1, 1] random versions of ``actions`` [b, H, Aw]."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.rand(actions.shape, generator=generator) * 2 - 1
    return {"ground_truth": actions, "zero": torch.zeros_like(actions), "random": random}


def action_sensitivity(wm: WorldModel, dataset_path: str | Path, n_clips: int = 256, seed: int = 42,
                       predicted: int = 3, sampler: SamplerConfig | None = None,
                       batch_size: int = 64) -> dict[str, Any]:
    """Does the model listen to its actions? (docs/REFERENCE.md §3 action-sensitivity diagnostic.)

    From one true context frame, roll out ``predicted`` frames under ground-truth, zero and
    random actions (same sampling noise for all three) and report the latent MSE of the final
    predicted frame to the true final frame; ``context`` is the MSE of the context latent itself
    (no prediction at all). For a model with proprio, ``proprio_mse`` is the same for its
    predicted proprio (the planner's proprio term), in normalised (z-score) units. ``action_embedding_rms``
    is the model's action embedding RMS for each action set. A model that ignores actions shows
    equal distances. ``sampler`` defaults to the world model's planning sampler. ``wm`` may also
    be a JEPA's own predictor (``JEPAWorldModel``: deterministic, no sampler).
    """
    sampler = sampler or wm.sampler
    clips = validation_clips(wm, dataset_path, n_clips, 1 + predicted, seed)
    names = ("ground_truth", "zero", "random")
    keys = ("latents", "proprio") if wm.uses_proprio else ("latents",)
    mse = {key: dict.fromkeys((*names, "context"), 0.0) for key in keys}  # summed over clips
    rms = dict.fromkeys(names, 0.0)
    n = len(clips["pixels"])
    for start, batch in batches(clips, batch_size):
        variants = action_variants(batch["actions"].float(), seed + start)
        b = len(batch["pixels"])
        for name, actions in variants.items():
            pred, enc = rollout_from_context(wm, batch, 1, actions, sampler, seed + start)
            for key in keys:  # the last predicted frame against the truth
                mse[key][name] += float(((pred[key][:, -1] - enc[key][:, -1]) ** 2).mean()) * b
            rms[name] += wm.model.action_embedding_rms(actions) ** 2 * b
        for key in keys:  # the context frame itself against the truth
            mse[key]["context"] += float(((enc[key][:, 0] - enc[key][:, -1]) ** 2).mean()) * b
    return {
        "clips": n, "predicted_frames": predicted, "seed": seed,
        "sampler": None if sampler is None else dataclasses.asdict(sampler),
        "latent_mse": {k: v / n for k, v in mse["latents"].items()},
        "proprio_mse": {k: v / n for k, v in mse["proprio"].items()} if wm.uses_proprio else None,
        "action_embedding_rms": {k: math.sqrt(v / n) for k, v in rms.items()},
    }


NOISE_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.4, 0.7, 0.95, 0.999)


@torch.no_grad()
def denoising_error(wm: WorldModel, dataset_path: str | Path, n_clips: int = 64, seed: int = 42,
                    levels: tuple[float, ...] = NOISE_LEVELS, batch_size: int = 64) -> dict[str, Any]:
    """One-call x0 error of the denoiser per noise level, next to copying the context.

    Training windows from the checkpoint (its context frames at the context noise level, every
    other frame at ``level``) go through the model once; the result is the latent MSE of
    x0_hat to the truth on the non-context frames. ``copy_last`` is the MSE of the last context
    latent repeated. A model whose error near pure noise (the level where every rollout starts)
    stays above ``copy_last`` has not learned to carry the context forward: its samples cannot
    beat the copy-last baseline, however many sampling steps are used.
    """
    diffusion, model = wm.module.diffusion, wm.model
    n_ctx = diffusion.cfg.context_frames
    clips = validation_clips(wm, dataset_path, n_clips, wm.window, seed)
    generator = torch.Generator().manual_seed(seed)
    sums = {level: 0.0 for level in levels}
    copy = 0.0
    for _, batch in batches(clips, batch_size):
        enc = wm.encode({"pixels": batch["pixels"], "proprio": batch["proprio"]})
        x0, proprio = enc["latents"], enc["proprio"]  # [b, T, C, h, w], [b, T, P] | None
        actions = shift_actions(batch["actions"].float())  # [b, T, Aw]
        b = len(x0)
        copy += float(((x0[:, n_ctx - 1 : n_ctx] - x0[:, n_ctx:]) ** 2).mean()) * b
        for level in levels:
            t = diffusion.level_to_timestep(level).expand(b, x0.shape[1]).clone()
            t[:, :n_ctx] = diffusion.level_to_timestep(diffusion.cfg.context_noise_level)
            x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
            p_t = None if proprio is None else diffusion.q_sample(proprio, t, torch.randn(proprio.shape, generator=generator))
            out, _ = model(x_t, t, actions, p_t)
            x0_hat, _ = diffusion.predict_x0_eps(out.float(), x_t, t)
            sums[level] += float(((x0_hat - x0)[:, n_ctx:] ** 2).mean()) * b
    n = len(clips["pixels"])
    return {"clips": n, "seed": seed, "context_frames": n_ctx, "window": wm.window,
            "x0_mse": {str(level): v / n for level, v in sums.items()}, "copy_last": copy / n}


def held_action_plans(env: gym.Env, n_starts: int, n_plans: int, length: int, frameskip: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Start states [n_starts, state_dim] from ``sample_start_and_goal`` and, per start, ``n_plans``
    uniform actions [n_starts, n_plans, A] each held for ``length`` planner steps, with the true
    states at every planner step [n_starts, n_plans, length + 1, state_dim]."""
    base = env.unwrapped
    rng = np.random.default_rng(seed)
    starts = np.stack([base.sample_start_and_goal(rng)[0] for _ in range(n_starts)])
    low, high = base.action_space.low, base.action_space.high
    held = rng.uniform(low, high, size=(n_starts, n_plans, len(low)))
    states = np.stack([
        np.stack([base.simulate(start, np.repeat(a[None], length * frameskip, axis=0))[::frameskip] for a in plans])
        for start, plans in zip(starts, held)
    ])
    return held, states


def plan_tracking(wm: WorldModel, env: gym.Env | None = None, n_starts: int = 32, n_plans: int = 8,
                  horizon: int = 5, seed: int = 0, sampler: SamplerConfig | None = None) -> dict[str, Any]:
    """Does the model follow the plans a planner will try? Open-loop proprio error in env units.

    Each plan holds one uniform random action: straight, fast motion that runs into walls,
    which is what CEM's plans look like and what i.i.d. random data rarely shows. The true env
    executes every plan from ``n_starts`` start states (the env's ``sample_start_and_goal``); the
    model gets the first ``c`` true observations (its context frames: the plan is already under
    way) and predicts the next ``horizon`` planner steps. Reported: the RMSE of the predicted to
    the true proprio per predicted step and per proprio dimension, for the model and for
    ``stay`` (the last context proprio held). A model that predicts plans through walls or too
    slowly shows errors close to ``stay``'s; the planner then scores the wrong plans best.
    ``env`` defaults to the checkpoint's own env config; ``sampler`` to the world model's
    planning sampler.
    """
    if not wm.uses_proprio:
        raise ValueError("plan_tracking compares predicted proprio: this world model has none")
    if min(n_starts, n_plans, horizon) < 1:
        raise ValueError(f"need n_starts, n_plans and horizon >= 1, got {n_starts}, {n_plans}, {horizon}")
    env = env if env is not None else EnvConfig(**wm.module.cfg.env).make()
    base = env.unwrapped
    wm.check_env(env.spec.id if env.spec else type(base).__name__, wm.frameskip, base.resolution)
    c = wm.module.diffusion.cfg.context_frames
    held, states = held_action_plans(env, n_starts, n_plans, c - 1 + horizon, wm.frameskip, seed)
    n = n_starts * n_plans
    obs = obs_batch([observe(env, s) for s in states.reshape(n * (c + horizon), -1)])
    pixels = obs["pixels"].view(n, c + horizon, *obs["pixels"].shape[1:])  # [N, c + H, H, W, 3]
    proprio = obs["proprio"].view(n, c + horizon, -1)  # [N, c + H, P]
    planner_actions = torch.as_tensor(np.tile(held.reshape(n, 1, -1), (1, 1, wm.frameskip)), dtype=torch.float32)
    enc = wm.encode({"pixels": pixels[:, :c], "proprio": proprio[:, :c]})
    context = {"latents": enc["latents"], "proprio": enc["proprio"], "actions": planner_actions.expand(n, c - 1, -1)}
    pred = wm.rollout(context, planner_actions.expand(n, horizon, -1)[:, None], sampler=sampler, seed=seed)
    predicted = wm.module.denormalize_proprio(pred["proprio"][:, 0])  # [N, H, P]
    truth = proprio[:, c:]  # [N, H, P]
    stay = proprio[:, c - 1 : c].expand_as(truth)

    def errors(guess: torch.Tensor) -> dict[str, Any]:
        sq = (guess - truth) ** 2
        return {"rmse": float(sq.mean().sqrt()), "rmse_per_step": [float(v) for v in sq.mean((0, 2)).sqrt()],
                "rmse_per_dim": [float(v) for v in sq.mean((0, 1)).sqrt()]}

    return {"starts": n_starts, "plans": n_plans, "horizon": horizon, "context_frames": c, "seed": seed,
            "sampler": dataclasses.asdict(sampler or wm.sampler), "model": errors(predicted), "stay": errors(stay)}
