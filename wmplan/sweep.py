"""``wmplan-sweep``: one-command ablations of the design choices Nano World Models studies.

    wmplan-sweep ablation=objective env=wall data=data/wall        # cells eps | v | x | flow
    wmplan-sweep ablation=size env=wall budget.train_steps=3000    # tiny | mini | S
    wmplan-sweep ablation=action_injection env=wall                # additive | adaln | ... | cross_attention
    wmplan-sweep ablation=sampling_steps env=wall                  # 1 | 3 | 10 | 30 DDIM steps
    wmplan-sweep ablation=objective cell=x                         # one cell only
    wmplan-sweep ablation=objective hydra/launcher=slurm           # one SLURM job per cell (submitit)

A sweep is a Hydra multirun over ``cell`` (the ablation file lists the cells), so any Hydra
launcher runs it: the default runs the cells one after another, ``hydra/launcher=slurm``
submits each as a SLURM job. Each cell trains (or resumes) its world model from the env's
recipe (``recipe``, an experiment file) plus the cell's overrides, then measures, on the same data and seeds:

- prediction PSNR / SSIM per rollout step against copy-last-frame (``prediction_quality``);
- action sensitivity: latent error of the last predicted frame under true, zero and random
  actions (``action_sensitivity``; a model that ignores actions shows equal errors);
- plan tracking: proprio error along held-action plans run in the true env, next to
  predicting no motion (``plan_tracking``, models with proprio);
- MPC success of ``wmplan-plan`` (``budget.plan_episodes``; 0 skips it), next to random
  actions and the true-simulator oracle under the same protocol (``baselines``, once per sweep).

A finished cell writes ``cells/<cell>/cell.json`` atomically and is skipped when the sweep runs
again; an interrupted one resumes its training from ``latest.ckpt`` and its evaluation from
the steps already written. Cells whose training overrides are equal share one model (the
sampling-steps cells all read one checkpoint). A cell with ``codec: trained_vae | jepa`` first
trains that codec on the sweep's data into ``codecs/<name>`` (once per sweep); with
``world_model: codec`` the cell trains no NanoWM and plans with the JEPA codec's own predictor
(LeWorldModel's world model). Every finished cell,
and the end of the multirun, rewrites ``sweep.csv``, ``sweep.md``, ``sweep.png`` and
``report.html`` from all finished cells.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra import compose
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from wmplan.atomic import atomic_path, exclusive_lock, write_json_atomic
from wmplan.cli import check_numbers, reports_user_errors
from wmplan.config_dir import CONFIG_DIR
from wmplan.report import cell_setting, write_sweep_report

log = logging.getLogger(__name__)
CELL_FILE = "cell.json"


# -- one cell -----------------------------------------------------------------------------
CELL_KEYS = ("train", "plan", "sampler", "codec", "init", "world_model")


def cell_spec(cfg: DictConfig) -> dict[str, Any]:
    """The selected cell: its ``train`` and ``plan`` overrides, ``sampler`` fields for evaluation
    (e.g. steps, guidance_scale), the ``codec`` it trains first, the weight transfer it
    ``init``-s from the ablation's pretrained model with, and ``world_model: codec`` when it
    plans with the codec's own predictor instead of a NanoWM (None for each when absent)."""
    cells = cfg.ablation.cells
    if cfg.cell is None or str(cfg.cell) not in cells:  # cell=1 arrives as an int
        raise ValueError(f"cell={cfg.cell!r} is not a cell of ablation {cfg.ablation.name}: "
                         f"choose one of {list(cells)} (or run the whole sweep without cell=)")
    spec = OmegaConf.to_container(cells[str(cfg.cell)], resolve=True) or {}
    where = f"ablation {cfg.ablation.name} cell {cfg.cell}"
    unknown = set(spec) - set(CELL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a cell has {list(CELL_KEYS)}")
    if spec.get("codec") not in (None, *CODEC_TRAINERS):
        raise ValueError(f"{where}: codec must be one of {list(CODEC_TRAINERS)}, got {spec['codec']!r}")
    if spec.get("init") is not None and not cfg.ablation.get("pretrain"):
        raise ValueError(f"{where}: init needs the ablation's pretrain overrides (the model to start from)")
    if spec.get("world_model") not in (None, "codec"):
        raise ValueError(f"{where}: world_model must be codec (the codec's own predictor) or absent, got {spec['world_model']!r}")
    if spec.get("world_model") == "codec" and (spec.get("codec") != "jepa" or spec.get("train") or spec.get("init")):
        raise ValueError(f"{where}: world_model: codec plans with a JEPA's predictor: it needs codec: jepa and no train or init")
    return {"train": list(spec.get("train", [])), "plan": list(spec.get("plan", [])),
            "sampler": dict(spec.get("sampler") or {}), "codec": spec.get("codec"), "init": spec.get("init"),
            "world_model": spec.get("world_model")}


def train_overrides(cfg: DictConfig, spec: dict[str, Any]) -> list[str]:
    """The ``wmplan-train`` overrides of a cell, without where it writes."""
    recipe = [] if cfg.recipe is None else [f"experiment={cfg.recipe}"]
    codec = [] if spec["codec"] is None else [f"latent={spec['codec']}", f"latent.path={codec_dir(cfg, spec['codec'])}"]
    init = [] if spec["init"] is None else [f"training.init_from={pretrain_checkpoint(cfg)}",
                                            f"training.causalize={spec['init']}"]
    return [*env_overrides(cfg), *recipe, f"data.path={Path(cfg.data).absolute()}",
            f"training.max_steps={cfg.budget.train_steps}", *codec, *init, *cfg.train_overrides, *spec["train"]]


def pretrain_checkpoint(cfg: DictConfig) -> Path:
    return (Path(cfg.out_dir) / "pretrain" / "checkpoints" / "latest.ckpt").absolute()


def pretrain(cfg: DictConfig) -> None:
    """Train the ablation's shared starting model once (``ablation.pretrain`` overrides on the
    recipe, ``budget.pretrain_steps``), e.g. Vid2World's non-causal, action-free video model."""
    from wmplan.train import train

    recipe = [] if cfg.recipe is None else [f"experiment={cfg.recipe}"]
    out = pretrain_checkpoint(cfg).parents[1]
    with exclusive_lock(out.parent / "pretrain.lock"):
        train(compose("train", [*env_overrides(cfg), *recipe, f"data.path={Path(cfg.data).absolute()}",
                                f"training.max_steps={cfg.budget.pretrain_steps}", *cfg.train_overrides,
                                *cfg.ablation.pretrain, f"out_dir={out}"]))


def codec_dir(cfg: DictConfig, name: str) -> Path:
    return (Path(cfg.out_dir) / "codecs" / name).absolute()


def train_vae_codec(cfg: DictConfig, out: Path) -> None:
    from wmplan.train_vae import VAETrainConfig, train_vae

    vae_cfg = compose("train_vae", [*env_overrides(cfg), *cfg.codec_overrides.trained_vae])
    train_vae(Path(cfg.data), out, VAETrainConfig(**OmegaConf.to_container(vae_cfg.train, resolve=True)))


def train_jepa_codec(cfg: DictConfig, out: Path) -> None:
    from wmplan.train_jepa import JEPATrainConfig, train_jepa

    jepa_cfg = compose("train_jepa", [*env_overrides(cfg), *cfg.codec_overrides.jepa])
    env = {"id": jepa_cfg.env.id, "frameskip": jepa_cfg.env.frameskip, "resolution": jepa_cfg.env.resolution}
    train_jepa(Path(cfg.data), out, OmegaConf.to_container(jepa_cfg.model, resolve=True),
               JEPATrainConfig(**OmegaConf.to_container(jepa_cfg.train, resolve=True)), env)


# Codecs a cell can train on the sweep's own data before its world model (``codec: <name>``).
CODEC_TRAINERS = {"trained_vae": train_vae_codec, "jepa": train_jepa_codec}


def prepare_codec(cfg: DictConfig, name: str | None) -> None:
    """Train the cell's codec into ``out_dir/codecs/<name>`` unless it is there (once per sweep).
    The settings it was trained with sit beside it (``<name>.overrides.json``); a rerun whose
    ``codec_overrides`` differ is refused rather than served the old codec."""
    if name is None:
        return
    out = codec_dir(cfg, name)
    settings = codec_settings(cfg, name)
    record = out.with_name(f"{name}.overrides.json")
    with exclusive_lock(out.parent / f"{name}.lock"):
        if out.exists():
            trained = json.loads(record.read_text()) if record.exists() else None
            if trained != settings:
                raise ValueError(f"codec {out} was trained with {trained if trained is not None else 'unrecorded settings'}, "
                                 f"this sweep asks for {settings}: delete {out} to retrain it, or use another out_dir")
            return
        log.info(f"training the {name} codec into {out}")
        CODEC_TRAINERS[name](cfg, out)
        write_json_atomic(record, settings)


def codec_settings(cfg: DictConfig, name: str | None) -> list[str]:
    """The overrides a cell's codec trains with (none for a cell without a trained codec)."""
    return [] if name is None else [*env_overrides(cfg), *cfg.codec_overrides[name]]


def env_overrides(cfg: DictConfig) -> list[str]:
    """The sweep's env, with the settings a user may have changed on the command line."""
    return [f"env={cfg.env.name}", f"env.resolution={cfg.env.resolution}", f"env.frameskip={cfg.env.frameskip}"]


def model_dir(cfg: DictConfig, overrides: Sequence[str]) -> Path:
    """Cells with equal training overrides (a trained codec's own settings included) share one
    model folder."""
    key = hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:12]
    return Path(cfg.out_dir) / "models" / key


def train_cell(cfg: DictConfig, spec: dict[str, Any]) -> str:
    """Train (or resume to the budget) the cell's world model; returns its checkpoint, or
    ``jepa:<codec folder>`` for a cell that plans with the JEPA's own predictor."""
    from wmplan.jepa_world_model import PREFIX
    from wmplan.train import train

    prepare_codec(cfg, spec["codec"])
    if spec["world_model"] == "codec":
        return f"{PREFIX}{codec_dir(cfg, spec['codec'])}"
    if spec["init"] is not None:
        pretrain(cfg)  # resumes to its budget, or returns at once when done
    overrides = train_overrides(cfg, spec)
    out = model_dir(cfg, [*overrides, *codec_settings(cfg, spec["codec"])])  # a new codec, a new model
    with exclusive_lock(out / "train.lock"):
        (out / "overrides.json").parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "overrides.json", overrides)
        return str(train(compose("train", [*overrides, f"out_dir={out}"])))


def evaluate_cell(cfg: DictConfig, spec: dict[str, Any], checkpoint: str, cell_dir: Path) -> dict[str, Any]:
    """Prediction quality per step, action sensitivity and MPC success of one checkpoint (or a
    JEPA's predictor, which has no decoder or sampler); each measurement is written as
    it finishes, so a rerun resumes after the last one."""
    from wmplan.diagnostics import action_sensitivity, plan_tracking, prediction_quality, reference_sampler
    from wmplan.jepa_world_model import PREFIX, JEPAWorldModel
    from wmplan.planners.evaluate import evaluate
    from wmplan.rollout import WorldModel
    from wmplan.video_metrics import VideoMetrics

    b = cfg.budget
    if checkpoint.startswith(PREFIX):
        wm, sampler, decodes = JEPAWorldModel.from_folder(checkpoint), None, False
    else:
        wm = WorldModel.from_checkpoint(checkpoint)
        sampler = dataclasses.replace(reference_sampler(wm, steps=b.quality_sampler_steps), **spec["sampler"])
        decodes = wm.module.codec.can_decode
    measures = {
        "quality": lambda: None if not decodes else prediction_quality(
            wm, cfg.data, b.quality_clips, context=wm.context_frames, predicted=b.rollout_steps, seed=cfg.seed,
            sampler=sampler, video_metrics=VideoMetrics(rf_seed=cfg.seed)),
        "sensitivity": lambda: action_sensitivity(wm, cfg.data, b.quality_clips, seed=cfg.seed, sampler=sampler),
        # plan_tracking reads a NanoWM checkpoint's env and sampler: not a JEPA predictor's
        "tracking": lambda: None if sampler is None or not wm.uses_proprio or b.tracking_starts == 0 else plan_tracking(
            wm, n_starts=b.tracking_starts, n_plans=8, seed=cfg.seed),
        "plan": lambda: None if b.plan_episodes == 0 else plan_cell(cfg, spec, checkpoint, cell_dir / "plan", evaluate),
    }
    out = {}
    for name, measure in measures.items():
        path = cell_dir / f"{name}.json"
        if not path.exists():
            write_json_atomic(path, measure(), default=str)
        out[name] = json.loads(path.read_text())
    return out


def plan_cell(cfg: DictConfig, spec: dict[str, Any], checkpoint: str | Path, out_dir: Path, evaluate) -> dict[str, Any]:
    sampler = [f"sampler.{key}={value}" for key, value in spec["sampler"].items()]
    plan_cfg = compose("plan", [
        *env_overrides(cfg), f"world_model={checkpoint}", f"episodes={cfg.budget.plan_episodes}",
        f"seed={cfg.seed + 57}", f"out_dir={out_dir}", "videos=0", "progress=false",
        f"goals.dataset={Path(cfg.data).absolute()}", *sampler, *cfg.plan_overrides, *spec["plan"],
    ])
    results = evaluate(plan_cfg)
    log.info(results["summary"])
    return {key: results[key] for key in ("episodes", "success_rate", "success_ci95", "success_rate_any",
                                          "mean_final_distance", "plan_time_mean_s")}


BASELINES = ("random", "oracle")


def plan_baselines(cfg: DictConfig) -> None:
    """Random actions and the true-simulator oracle under the cells' MPC protocol, once per
    sweep (``baselines/<name>.json``): the floor and ceiling the success plot shows."""
    from wmplan.planners.evaluate import evaluate

    if cfg.budget.plan_episodes == 0 or not cfg.baselines:
        return
    folder = Path(cfg.out_dir) / "baselines"
    for name in BASELINES:
        with exclusive_lock(folder / f"{name}.lock"):
            if not (folder / f"{name}.json").exists():
                spec = {"sampler": {}, "plan": []}
                write_json_atomic(folder / f"{name}.json", plan_cell(cfg, spec, Path(name), folder / name, evaluate))


def read_baselines(out_dir: str | Path) -> dict[str, dict[str, Any]]:
    folder = Path(out_dir) / "baselines"
    return {name: json.loads((folder / f"{name}.json").read_text()) for name in BASELINES
            if (folder / f"{name}.json").exists()}


def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """One sweep job: train and measure the cell ``cfg.cell``, unless it already finished."""
    check_numbers(cfg, {"budget.train_steps": 1, "budget.quality_clips": 1, "budget.rollout_steps": 1,
                        "budget.quality_sampler_steps": 1, "budget.plan_episodes": 0, "budget.pretrain_steps": 1,
                        "budget.tracking_starts": 0, "seed": 0})
    spec = cell_spec(cfg)
    cell_dir = Path(cfg.out_dir) / "cells" / str(cfg.cell)
    done = cell_dir / CELL_FILE
    if done.exists():
        log.info(f"cell {cfg.cell}: finished earlier ({done}), skipped")
        return json.loads(done.read_text())
    if not Path(cfg.data).is_dir():
        raise FileNotFoundError(f"dataset {cfg.data} not found: collect it with wmplan-collect env={cfg.env.name}")
    plan_baselines(cfg)
    checkpoint = train_cell(cfg, spec)
    settings = {("plan_overrides" if key == "plan" else key): value for key, value in spec.items()}  # "plan": the MPC result
    result = {"ablation": cfg.ablation.name, "cell": str(cfg.cell), "env": cfg.env.name, **settings,
              "checkpoint": checkpoint, **evaluate_cell(cfg, spec, checkpoint, cell_dir)}
    write_json_atomic(done, result, default=str)
    write_report(cfg.out_dir, list(cfg.ablation.cells), cfg.ablation.get("finding", ""))
    return result


# -- the report ---------------------------------------------------------------------------
COLUMNS = ("cell", "success", "success_ci95", "final_distance", "s_per_replan", "psnr", "copy_last_psnr",
           "codec_psnr", "psnr_last_step", "rf_fvd", "copy_last_rf_fvd", "latent_mse_true", "latent_mse_zero", "latent_mse_random", "tracking_rmse",
           "stay_rmse")


def report_row(cell: dict[str, Any]) -> dict[str, Any]:
    q, s, p, t = cell.get("quality"), cell["sensitivity"]["latent_mse"], cell.get("plan"), cell.get("tracking")
    return {
        "cell": cell["cell"],
        "success": None if p is None else p["success_rate"],
        "success_ci95": None if p is None else "-".join(f"{x:.2f}" for x in p["success_ci95"]),
        "final_distance": None if p is None else p["mean_final_distance"],
        "s_per_replan": None if p is None else p["plan_time_mean_s"],
        "psnr": None if q is None else q["model"]["psnr"],
        "copy_last_psnr": None if q is None else q["copy_last"]["psnr"],
        "codec_psnr": None if q is None else q["reconstruction"]["psnr"],  # decode(encode(truth)): the ceiling
        "psnr_last_step": None if q is None else q["model"]["psnr_per_frame"][-1],
        "rf_fvd": None if q is None or "video_metrics" not in q else q["video_metrics"]["model"]["rf_fvd"],
        "copy_last_rf_fvd": None if q is None or "video_metrics" not in q else q["video_metrics"]["copy_last"]["rf_fvd"],
        "latent_mse_true": s["ground_truth"], "latent_mse_zero": s["zero"], "latent_mse_random": s["random"],
        "tracking_rmse": None if t is None else t["model"]["rmse"], "stay_rmse": None if t is None else t["stay"]["rmse"],
    }


def finished_cells(out_dir: str | Path, order: Sequence[str]) -> list[dict[str, Any]]:
    cells_dir = Path(out_dir) / "cells"
    return [json.loads((cells_dir / c / CELL_FILE).read_text()) for c in order if (cells_dir / c / CELL_FILE).exists()]


def write_report(out_dir: str | Path, order: Sequence[str], finding: str = "") -> list[dict[str, Any]]:
    """sweep.csv, sweep.md, sweep.png and report.html from every finished cell, in the ablation's order."""
    cells = finished_cells(out_dir, order)
    if not cells:
        return []
    rows = [report_row(c) for c in cells]
    baselines = read_baselines(out_dir)
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    with atomic_path(out_dir / "sweep.md") as tmp:
        tmp.write_text(markdown_table(cells, rows, finding, baselines))
    with atomic_path(out_dir / "sweep.png") as tmp:
        plot(cells, baselines, tmp)
    write_sweep_report(out_dir, cells, rows, baselines, finding)
    return rows


def fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown_table(cells: list[dict[str, Any]], rows: list[dict[str, Any]], finding: str,
                   baselines: dict[str, dict[str, Any]]) -> str:
    c0 = cells[0]
    head = (f"# Ablation `{c0['ablation']}` on {c0['env']}\n\n" + (f"Expected: {finding}\n\n" if finding else "")
            + "| cell | setting | success [95% CI] | final dist | s/replan | PSNR (copy-last / codec) | PSNR last step | rf-FVD (copy-last) "
            "| latent MSE true / zero / random actions | plan tracking RMSE (stay) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for cell, r in zip(cells, rows):
        success = "-" if r["success"] is None else f"{r['success']:.2f} [{r['success_ci95']}]"
        psnr = "-" if r["psnr"] is None else f"{r['psnr']:.2f} ({r['copy_last_psnr']:.2f} / {r['codec_psnr']:.2f})"
        lines.append(f"| {r['cell']} | `{cell_setting(cell)}` | {success} | {fmt(r['final_distance'])} | "
                     f"{fmt(r['s_per_replan'])} | {psnr} | {fmt(r['psnr_last_step'], 4)} | "
                     + ("-" if r["rf_fvd"] is None else f"{r['rf_fvd']:.3g} ({r['copy_last_rf_fvd']:.3g})") + " | "
                     f"{fmt(r['latent_mse_true'])} / {fmt(r['latent_mse_zero'])} / {fmt(r['latent_mse_random'])} | "
                     + ("-" if r["tracking_rmse"] is None else f"{r['tracking_rmse']:.3g} ({r['stay_rmse']:.3g})") + " |")
    for name, b in baselines.items():
        ci = "-".join(f"{x:.2f}" for x in b["success_ci95"])
        lines.append(f"| *{name}* | (baseline) | {b['success_rate']:.2f} [{ci}] | {fmt(b['mean_final_distance'])} | "
                     f"{fmt(b['plan_time_mean_s'])} | - | - | - | - | - |")
    return head + "\n".join(lines) + "\n"


def plot(cells: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], path: Path) -> None:
    """Three panels: PSNR per rollout step (copy-last dashed, the codec's reconstruction dotted); success per cell with its 95%
    interval and the random / oracle baselines; success against seconds per replan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, success, speed) = plt.subplots(1, 3, figsize=(15, 4))
    with_quality = [c for c in cells if c.get("quality")]
    for cell in with_quality:
        per_step = cell["quality"]["model"]["psnr_per_frame"]
        quality.plot(range(1, len(per_step) + 1), per_step, marker="o", label=cell["cell"])
    if with_quality:
        copy_last = with_quality[0]["quality"]["copy_last"]["psnr_per_frame"]
        quality.plot(range(1, len(copy_last) + 1), copy_last, "k--", label="copy-last")
        codec = with_quality[0]["quality"]["reconstruction"]["psnr_per_frame"]  # the ceiling of a latent prediction
        quality.plot(range(1, len(codec) + 1), codec, ":", color="gray", label="codec (ceiling)")
        quality.legend(fontsize=8)
    quality.set(xlabel="rollout step", ylabel="PSNR (dB)", title="prediction quality")
    planned = [c for c in cells if c.get("plan")]
    if planned:
        plot_success(success, speed, planned, baselines)
    else:  # a sweep without MPC (budget.plan_episodes=0): video quality in the middle panel instead
        scored = [c for c in with_quality if "video_metrics" in c["quality"]]
        success.bar([c["cell"] for c in scored], [c["quality"]["video_metrics"]["model"]["rf_fvd"] for c in scored])
        success.set(ylabel="rf-FVD (lower is better)", title="rf-FVD, not comparable to published FVD")
        success.tick_params(axis="x", labelrotation=30, labelsize=8)
        speed.set_visible(False)
    fig.suptitle(f"ablation {cells[0]['ablation']} on {cells[0]['env']}")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_success(success, speed, planned: list[dict[str, Any]], baselines: dict[str, dict[str, Any]]) -> None:
    """Success bars with 95% intervals and the baselines; success against seconds per replan."""
    rates = [c["plan"]["success_rate"] for c in planned]
    errors = [[r - c["plan"]["success_ci95"][0] for r, c in zip(rates, planned)],
              [c["plan"]["success_ci95"][1] - r for r, c in zip(rates, planned)]]
    success.bar([c["cell"] for c in planned], rates, yerr=errors, capsize=4, color="tab:blue")
    for (name, b), style in zip(baselines.items(), ("r:", "g--")):
        success.axhline(b["success_rate"], color=style[0], linestyle=style[1:], label=f"{name} {b['success_rate']:.2f}")
    if baselines:
        success.legend(fontsize=8)
    success.set(ylim=(0, 1.05), ylabel="MPC success", title="planning (95% CI)")
    success.tick_params(axis="x", labelrotation=30, labelsize=8)  # long cell names stay apart
    for c in planned:
        speed.scatter(c["plan"]["plan_time_mean_s"], c["plan"]["success_rate"])
        speed.annotate(c["cell"], (c["plan"]["plan_time_mean_s"], c["plan"]["success_rate"]), fontsize=8)
    times = [c["plan"]["plan_time_mean_s"] for c in planned]
    if max(times) > 10 * min(times):  # a log axis only where the costs span a decade
        speed.set_xscale("log")
    speed.set(ylim=(0, 1.05), xlabel="seconds per replan", ylabel="MPC success", title="success vs cost")


class WriteReport(Callback):
    """At the end of a multirun (after every launcher's jobs), rewrite the report once more:
    cells that finished at the same moment on a cluster may each have missed the other."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_report(config.out_dir, list(config.ablation.cells), config.ablation.get("finding", ""))


@hydra.main(config_path=str(CONFIG_DIR), config_name="sweep", version_base="1.3")
@reports_user_errors("wmplan-sweep")
def main(cfg: DictConfig) -> None:
    result = run_cell(cfg)
    plan = result.get("plan")
    print(f"wmplan-sweep {cfg.ablation.name} cell {cfg.cell}: "
          + ("no MPC" if plan is None else f"success {plan['success_rate']:.2f}") + f" -> {cfg.out_dir}/sweep.md")


if __name__ == "__main__":
    main()
