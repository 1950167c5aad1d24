"""Compare latent codecs for planning: one world model per codec, the same recipe, the same MPC.

    python scripts/compare_latents.py --env wall --dataset data/wall --steps 2000 --episodes 20
    python scripts/compare_latents.py --dino /models/dinov2-small --vjepa /models/vjepa2-vitl
    python scripts/compare_latents.py --checkpoint pixels=outputs/train/wall/checkpoints/latest.ckpt

For each codec (``pixels`` and ``trained_vae``, plus ``dino`` / ``vjepa`` when their local
weight folders are given) a world model is trained with ``wmplan.train.train`` from the same
composed ``train`` config and step budget (or taken from ``--checkpoint name=path``), then
``wmplan.planners.evaluate.evaluate`` runs the same ``plan`` config on it. The patch size is
chosen per codec so every model sees the same ``--tokens-side`` x ``--tokens-side`` tokens per
frame. The ``trained_vae`` codec is trained first when its folder is missing. Prints a table
(success, final distance, seconds per replan, PSNR / SSIM for codecs that decode, and the
proprio RMSE of ``plan_tracking`` next to predicting no motion) and writes
``comparison.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from wmplan.atomic import write_json_atomic
from wmplan.config_dir import CONFIG_DIR
from wmplan.data.dataset import load_dataset_info
from wmplan.diagnostics import plan_tracking, prediction_quality, reference_sampler
from wmplan.models.codecs import CODEC_NAMES, CodecConfig, build_codec
from wmplan.train_vae import VAETrainConfig, train_vae
from wmplan.planners.evaluate import evaluate
from wmplan.rollout import WorldModel
from wmplan.train import train


def compose_config(name: str, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="wall", help="wmplan/configs/env/<name>")
    p.add_argument("--dataset", type=Path, default=None, help="collected dataset (default data/<env>)")
    p.add_argument("--experiment", default=None, help="wmplan/configs/experiment/<name> recipe (default: <env> if it exists; 'none' for none)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default outputs/compare_latents/<env>)")
    p.add_argument("--steps", type=int, default=2000, help="world-model training steps, the same for every codec")
    p.add_argument("--vae-steps", type=int, default=None,
                   help="steps for the trained_vae codec when it must be trained (default: wmplan/configs/train_vae.yaml)")
    p.add_argument("--vae-dir", type=Path, default=None, help="trained_vae folder (default outputs/vae/<env>)")
    p.add_argument("--dino", type=Path, default=None, help="local DINOv2 weights folder: adds the dino codec")
    p.add_argument("--vjepa", type=Path, default=None, help="local V-JEPA 2 weights folder: adds the vjepa codec")
    p.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", help="use a trained model for codec NAME")
    p.add_argument("--tokens-side", type=int, default=4, help="tokens per frame side; patch = latent side / this")
    p.add_argument("--episodes", type=int, default=50, help="MPC episodes per codec")
    p.add_argument("--eval-clips", type=int, default=256, help="validation clips for PSNR/SSIM (0 = skip)")
    p.add_argument("--eval-steps", type=int, default=10, help="sampling steps for PSNR/SSIM")
    p.add_argument("--tracking-starts", type=int, default=32,
                   help="start states for plan tracking, 8 held-action plans each (0 = skip)")
    p.add_argument("--train-override", nargs="*", default=[], help="extra train-config overrides (all codecs)")
    p.add_argument("--plan-override", nargs="*", default=[], help="extra plan-config overrides (all codecs)")
    return p.parse_args(argv)


def parse_checkpoints(items: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` items -> {codec name: checkpoint path}."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path or name not in CODEC_NAMES:
            raise ValueError(f"--checkpoint takes NAME=PATH with NAME in {CODEC_NAMES}, got {item!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {name}: no file {path}")
        out[name] = Path(path)
    return out


def codec_paths(args: argparse.Namespace, given: dict[str, Path]) -> dict[str, Path | None]:
    """Codec name -> its weights folder (None for pixels or a given checkpoint), in table order."""
    codecs: dict[str, Path | None] = {"pixels": None, "trained_vae": args.vae_dir}
    if args.dino is not None:
        codecs["dino"] = args.dino
    if args.vjepa is not None:
        codecs["vjepa"] = args.vjepa
    return {**codecs, **{name: None for name in given if name not in codecs}}


def ensure_vae(args: argparse.Namespace, resolution: int) -> None:
    """Train the trained_vae codec on the dataset when its folder does not exist yet."""
    if args.vae_dir.exists():
        return
    steps = [] if args.vae_steps is None else [f"train.steps={args.vae_steps}"]
    cfg = compose_config("train_vae", [f"env={args.env}", f"env.resolution={resolution}", *steps])
    print(f"training the VAE codec ({cfg.train.steps} steps) into {args.vae_dir}")
    train_vae(args.dataset, args.vae_dir, VAETrainConfig(**OmegaConf.to_container(cfg.train, resolve=True)))


def latent_overrides(name: str, path: Path | None, resolution: int, tokens_side: int) -> list[str]:
    """Overrides selecting codec ``name`` and the patch size that gives tokens_side^2 tokens per frame."""
    overrides = [f"latent={name}", f"env.resolution={resolution}"] + ([] if path is None else [f"latent.path={path}"])
    latent = compose_config("train", overrides).latent
    side = build_codec(CodecConfig(**latent)).latent_shape[1]
    if tokens_side < 1 or side % tokens_side:
        raise ValueError(f"codec {name}: latent side {side} is not a multiple of --tokens-side {tokens_side}")
    # Pin the codec's own size: an experiment recipe may set another (experiment=wall: 64 px).
    pinned = [f"latent.pixel_size={latent.pixel_size}"] if name == "pixels" else []
    return overrides + pinned + [f"model.patch_size={side // tokens_side}"]


def train_model(name: str, overrides: list[str], args: argparse.Namespace, recipe: list[str]) -> Path:
    """Train (or resume to the step budget) the world model of codec ``name``."""
    cfg = compose_config("train", [
        *recipe, *overrides, f"data.path={args.dataset.absolute()}", f"out_dir={args.out / name}",
        f"training.max_steps={args.steps}", *args.train_override,
    ])
    print(f"training {name} world model ({args.steps} steps) in {args.out / name}")
    return train(cfg)


def plan_with(name: str, checkpoint: Path, resolution: int, args: argparse.Namespace) -> dict[str, Any]:
    """The MPC protocol of the composed ``plan`` config on one checkpoint."""
    cfg = compose_config("plan", [
        f"env={args.env}", f"env.resolution={resolution}", f"world_model={checkpoint.absolute()}",
        f"episodes={args.episodes}", f"out_dir={args.out / name / 'plan'}", "videos=0",
        f"goals.dataset={args.dataset.absolute()}", *args.plan_override,
    ])
    results = evaluate(cfg)
    print(results["summary"])
    return results


def quality_of(wm: WorldModel, args: argparse.Namespace) -> dict[str, Any] | None:
    """docs/REFERENCE.md §3 prediction quality, for codecs that decode."""
    if not wm.module.codec.can_decode or args.eval_clips < 1:
        return None
    sampler = reference_sampler(wm, steps=args.eval_steps)
    return prediction_quality(wm, args.dataset, args.eval_clips, sampler=sampler)


def tracking_of(wm: WorldModel, args: argparse.Namespace) -> dict[str, Any] | None:
    """Proprio error along held-action plans in the true env, for models with proprio."""
    if not wm.uses_proprio or args.tracking_starts < 1:
        return None
    return plan_tracking(wm, n_starts=args.tracking_starts, n_plans=8)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    head = (f"{'codec':<12} {'success':>8} {'final dist':>11} {'s/replan':>9} {'PSNR':>7} {'SSIM':>7} {'copy PSNR':>9}"
            f" {'track':>7} {'stay':>7}")
    lines = [head]
    for name, r in rows.items():
        q, t = r["quality"], r["tracking"]
        pix = "      -       -         -" if q is None else (
            f"{q['model']['psnr']:7.2f} {q['model']['ssim']:7.4f} {q['copy_last']['psnr']:9.2f}")
        track = "      -       -" if t is None else f"{t['model']['rmse']:7.3f} {t['stay']['rmse']:7.3f}"
        lines.append(f"{name:<12} {r['success_rate']:8.2f} {r['mean_final_distance']:11.4g} {r['plan_time_mean_s']:9.3f} "
                     f"{pix} {track}")
    return "\n".join(lines)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.dataset = args.dataset or Path("data") / args.env
    args.out = args.out or Path("outputs/compare_latents") / args.env
    args.vae_dir = args.vae_dir or Path("outputs/vae") / args.env
    if args.experiment is None:
        args.experiment = args.env if (CONFIG_DIR / "experiment" / f"{args.env}.yaml").is_file() else "none"
    if not args.dataset.is_dir():
        raise FileNotFoundError(f"dataset {args.dataset} not found: collect it with wmplan-collect env={args.env}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = resolve_defaults(parse_args(argv))
    given = parse_checkpoints(args.checkpoint)
    resolution = int(load_dataset_info(args.dataset)["resolution"])
    recipe = [f"env={args.env}"] + ([] if args.experiment == "none" else [f"experiment={args.experiment}"])
    rows: dict[str, dict[str, Any]] = {}
    for name, path in codec_paths(args, given).items():
        checkpoint = given.get(name)
        if checkpoint is None:
            if name == "trained_vae":
                ensure_vae(args, resolution)
            checkpoint = train_model(name, latent_overrides(name, path, resolution, args.tokens_side), args, recipe)
        plan = plan_with(name, checkpoint, resolution, args)
        wm = WorldModel.from_checkpoint(checkpoint)
        rows[name] = {
            "checkpoint": str(checkpoint), "success_rate": plan["success_rate"],
            "mean_final_distance": plan["mean_final_distance"], "plan_time_mean_s": plan["plan_time_mean_s"],
            "quality": quality_of(wm, args), "tracking": tracking_of(wm, args),
        }
    print(format_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "comparison.json", {"args": {k: str(v) for k, v in vars(args).items()}, "codecs": rows})
    return rows


if __name__ == "__main__":
    main()
