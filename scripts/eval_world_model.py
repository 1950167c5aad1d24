"""Evaluate a world-model checkpoint: prediction quality (docs/REFERENCE.md §3), action sensitivity, the
denoiser's error per noise level, and open-loop tracking of held-action plans in the true env.

    python scripts/eval_world_model.py --checkpoint outputs/train/wall/checkpoints/latest.ckpt \
        --dataset data/wall --clips 256 --steps 10 --schedule sequential

Prints a table and writes ``<checkpoint stem>.eval.json`` next to the checkpoint (atomically).
Video metrics (docs/VIDEO_METRICS.md) on the same predicted vs true clips: rf-FVD / rf-FID always
(random-feature FVD/FID, not comparable to published FVD/FID); FVD, FID and LPIPS when local
weights are given (``--i3d``, ``--inception``, ``--lpips``).
The reference protocol samples with 250 DDIM steps (``--steps 250``); fewer steps are cheaper
on a CPU. Action sensitivity uses the checkpoint's planning sampler (what MPC sees).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from wmplan.atomic import write_json_atomic
from wmplan.diagnostics import action_sensitivity, denoising_error, plan_tracking, prediction_quality, reference_sampler
from wmplan.hardware import tune_cpu_allocator
from wmplan.rollout import WorldModel
from wmplan.video_metrics import RF_LABEL, VideoMetrics

ROWS = (("model", "model"), ("copy-last", "copy_last"), ("codec recon", "reconstruction"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--dataset", required=True, type=Path, help="the dataset folder the model was trained on")
    p.add_argument("--clips", type=int, default=256, help="fixed validation clips")
    p.add_argument("--seed", type=int, default=42, help="picks the validation clips")
    p.add_argument("--context", type=int, default=1,
                   help="true context frames (reference protocol: 1; e.g. 3 for a model trained with 3)")
    p.add_argument("--steps", type=int, default=10, help="sampling steps (reference protocol: 250)")
    p.add_argument("--schedule", default="sequential", choices=("sequential", "pyramid", "full_sequence"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--plans", type=int, default=8,
                   help="held-action plans per start state for plan tracking, from min(clips, 32) starts (0 = skip)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: next to the checkpoint)")
    p.add_argument("--i3d", type=Path, default=None, help="local I3D TorchScript (i3d_torchscript.pt): adds FVD")
    p.add_argument("--inception", type=Path, default=None, help="local Inception TorchScript: adds FID")
    p.add_argument("--lpips", type=Path, default=None, help="local LPIPS weights (VGG16 + lin state dict, or TorchScript backbone)")
    p.add_argument("--lpips-lin", type=Path, default=None, help="LPIPS lin weights, when --lpips has none")
    p.add_argument("--rf-seed", type=int, default=0, help="seed of the rf-FVD / rf-FID random feature nets")
    return p.parse_args(argv)


def format_video_metrics(video: dict[str, Any]) -> list[str]:
    names = list(video["model"])
    headers = {"rf_fvd": "rf-FVD", "rf_fid": "rf-FID", "fvd": "FVD", "fid": "FID", "lpips": "LPIPS"}
    lines = [f"video metrics of the predicted frames; {RF_LABEL}",
             f"  {'':<16} " + " ".join(f"{headers[n]:>9}" for n in names)]
    for label, key in ROWS:
        lines.append(f"  {label:<16} " + " ".join(f"{video[key][n]:9.4f}" for n in names))
    return lines


def format_table(quality: dict[str, Any] | None, sensitivity: dict[str, Any], denoising: dict[str, Any],
                 tracking: dict[str, Any] | None = None, video: dict[str, Any] | None = None) -> str:
    """The printed report: PSNR/SSIM model vs copy-last, the video metrics, latent distances and
    action RMS, the denoiser's x0 error per noise level, and the proprio error along held-action plans."""
    lines = []
    if quality is not None:
        lines.append(f"prediction quality: {quality['clips']} clips, {quality['context_frames']} context + "
                     f"{quality['predicted_frames']} predicted frames, {quality['sampler']['steps']} steps "
                     f"{quality['sampler']['schedule']}")
        lines.append(f"  {'':<16} {'PSNR':>7} {'SSIM':>7}   per frame PSNR")
        for label, key in ROWS:
            s = quality[key]
            frames = " ".join(f"{v:6.2f}" for v in s["psnr_per_frame"])
            lines.append(f"  {label:<16} {s['psnr']:7.2f} {s['ssim']:7.4f}   {frames}")
        if video is not None:
            lines += format_video_metrics(video)
    else:
        lines.append("prediction quality: codec is encode-only, no pixel metrics")
    mse, rms, pmse = sensitivity["latent_mse"], sensitivity["action_embedding_rms"], sensitivity["proprio_mse"]
    lines.append(f"action sensitivity: MSE of predicted frame {sensitivity['predicted_frames']} to the truth "
                 f"({sensitivity['clips']} clips, {sensitivity['sampler']['steps']} steps)")
    lines.append(f"  {'actions':<16} {'latent':>9} {'proprio':>9} {'emb RMS':>9}")
    for name in ("ground_truth", "zero", "random", "context"):
        proprio = "" if pmse is None else f"{pmse[name]:9.4f}"
        emb = f"{rms[name]:9.4f}" if name in rms else ""
        label = "context (copy)" if name == "context" else name
        lines.append(f"  {label:<16} {mse[name]:9.4f} {proprio:>9} {emb:>9}")
    lines.append(f"denoiser x0 latent MSE per noise level ({denoising['clips']} clips, one model call; "
                 f"copy-last {denoising['copy_last']:.4f})")
    lines.append("  " + " ".join(f"{level:>8}" for level in denoising["x0_mse"]))
    lines.append("  " + " ".join(f"{v:8.4f}" for v in denoising["x0_mse"].values()))
    if tracking is not None:
        lines.append(f"plan tracking: proprio RMSE in env units per predicted step ({tracking['starts']} starts x "
                     f"{tracking['plans']} held-action plans, {tracking['context_frames']} true context frames)")
        for name in ("model", "stay"):
            steps = " ".join(f"{v:8.4f}" for v in tracking[name]["rmse_per_step"])
            lines.append(f"  {name:<16} {tracking[name]['rmse']:9.4f}   {steps}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    tune_cpu_allocator()
    wm = WorldModel.from_checkpoint(args.checkpoint)
    start = time.perf_counter()
    quality = video = None
    if wm.module.codec.can_decode:
        metrics = VideoMetrics(args.i3d, args.inception, args.lpips, args.lpips_lin, args.rf_seed)
        sampler = reference_sampler(wm, steps=args.steps, schedule=args.schedule)
        quality = prediction_quality(wm, args.dataset, args.clips, args.context, seed=args.seed, sampler=sampler,
                                     batch_size=args.batch_size, video_metrics=metrics)
        video = quality.pop("video_metrics")
        video["weights"] = {"i3d": _str(args.i3d), "inception": _str(args.inception), "lpips": _str(args.lpips),
                            "lpips_lin": _str(args.lpips_lin)}
    sensitivity = action_sensitivity(wm, args.dataset, args.clips, seed=args.seed, batch_size=args.batch_size)
    denoising = denoising_error(wm, args.dataset, min(args.clips, 64), seed=args.seed, batch_size=args.batch_size)
    tracking = None
    if args.plans > 0 and wm.uses_proprio:
        tracking = plan_tracking(wm, n_starts=min(args.clips, 32), n_plans=args.plans, seed=args.seed)
    print(format_table(quality, sensitivity, denoising, tracking, video))
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}.eval.json")
    write_json_atomic(out, {
        "checkpoint": str(args.checkpoint), "checkpoint_sha256": wm.checkpoint_hash, "dataset": str(args.dataset),
        "prediction_quality": quality, "video_metrics": video, "action_sensitivity": sensitivity,
        "denoising_error": denoising, "plan_tracking": tracking,
        "seconds": round(time.perf_counter() - start, 2),
    })
    print(f"wrote {out}")
    return out


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


if __name__ == "__main__":
    main()
