"""wmplan-sweep: ablation files, one cell end to end, skipping and resuming, the report, the
multirun command line, and the SLURM launcher config."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RESOLUTION
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from test_report import linked_files, parse

from wmplan.config_dir import CONFIG_DIR
from wmplan.report import cell_setting
from wmplan.sweep import cell_spec, codec_settings, model_dir, run_cell, train_overrides, write_report

ABLATIONS = sorted(p.stem for p in (CONFIG_DIR / "ablation").glob("*.yaml"))
TINY_TRAIN = ["model=tiny", "latent=pixels", "latent.pixel_size=8", "data.num_frames=3", "data.val_fraction=0.3",
              "training.batch_size=2", "training.warmup_steps=1", "validation.every_n_steps=2", "validation.num_clips=2",
              "validation.batch_size=2", "validation.num_batches=1", "validation.sampler.steps=2"]
TINY_PLAN = ["budget_env_steps=10", "horizon=2", "planner.num_samples=8", "planner.topk=2", "planner.iterations=2"]


def quoted(items: list[str]) -> str:
    return "[" + ",".join(f'"{x}"' for x in items) + "]"


def sweep_overrides(data: Path, out: Path) -> list[str]:
    return [f"data={data}", f"out_dir={out}", "recipe=null", f"env.resolution={RESOLUTION}",
            "budget.train_steps=3", "budget.quality_clips=2", "budget.rollout_steps=3",
            "budget.quality_sampler_steps=2", "budget.plan_episodes=2", "budget.tracking_starts=2",
            f"train_overrides={quoted(TINY_TRAIN)}", f"plan_overrides={quoted(TINY_PLAN)}"]


def sweep_config(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("sweep", overrides, return_hydra_config=hydra)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_cells_are_swept_and_compose(ablation):
    """The sweeper runs the listed cells (all but those needing downloaded weights), and each
    cell's training config composes on the Wall recipe with the change the cell names."""
    cfg = sweep_config([f"ablation={ablation}"], hydra=True)
    cells = list(cfg.ablation.cells)
    swept = cfg.hydra.sweeper.params.cell.split(",")
    assert swept == [c for c in cells if c not in ("dino", "vjepa")] and len(swept) >= 2
    dirs = set()
    for cell in cells:
        cfg.cell = cell
        spec = cell_spec(cfg)
        if spec["world_model"] == "codec":  # plans with the JEPA's own predictor: nothing to train
            assert (ablation, spec["codec"]) == ("latent", "jepa") and cell.startswith("jepa_predictor")
            # the env recipe's objective (proprio term: the JEPA predicts proprio), or the latent alone
            assert spec["plan"] == ([] if cell == "jepa_predictor" else ["objective=dino_wm_maze"])
            assert "model.proprio_dim=null" in cfg.codec_overrides.jepa
            continue
        overrides = train_overrides(cfg, spec)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            train_cfg = compose("train", overrides)
        assert train_cfg.env.name == "wall"  # the recipe is applied
        assert train_cfg.latent.pixel_size == (32 if (ablation, cell) == ("latent", "pixels") else 64)
        if ablation == "latent":  # 4x4 tokens per frame (32 px pixels, 16x16 VAE latents), the JEPA's one
            assert train_cfg.latent.name == cell
            assert train_cfg.model.patch_size == {"pixels": 8, "trained_vae": 4, "jepa": 1}.get(cell, 4)
        dirs.add(model_dir(cfg, [*overrides, *codec_settings(cfg, spec["codec"])]))
        if ablation == "objective":
            assert train_cfg.diffusion.objective == cell and train_cfg.diffusion.timestep_sampling == "uniform"
        if ablation == "action_injection":
            assert train_cfg.model.action_injection == cell
        if ablation == "sampling_steps":
            assert spec["sampler"] == {"steps": int(cell)}
        if ablation == "data_size":
            assert train_cfg.data.max_train_episodes == int(cell) and "execute_k=1" in cfg.plan_overrides
        if ablation == "vid2world":
            assert train_cfg.model.temporal_conv == 3 and train_cfg.diffusion.action_dropout == 0.2
            assert (train_cfg.training.causalize is None) == cell.startswith("scratch")
    # One model per training: the sampling-steps cells share one, guided cells their unguided twin's;
    # the two JEPA-predictor cells train none.
    assert len(dirs) == {"sampling_steps": 1, "vid2world": 4, "latent": len(cells) - 2}.get(ablation, len(cells))


def test_unknown_cell_is_refused(tmp_path):
    cfg = sweep_config(["ablation=size", "cell=huge"])
    with pytest.raises(ValueError, match=r"cell='huge' is not a cell of ablation size: choose one of \['tiny', 'mini', 'S'\]"):
        run_cell(cfg)


def test_one_cell_end_to_end_skips_when_done_and_resumes(wall_data, tmp_path):
    out = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("sweep", [*sweep_overrides(wall_data, out), "ablation=objective", "cell=x"])
        result = run_cell(cfg)
        cell_dir = out / "cells" / "x"
        assert json.loads((cell_dir / "cell.json").read_text()) == json.loads(json.dumps(result))
        assert result["quality"]["predicted_frames"] == 3 and len(result["quality"]["model"]["psnr_per_frame"]) == 3
        assert set(result["sensitivity"]["latent_mse"]) == {"ground_truth", "zero", "random", "context"}
        assert result["plan"]["episodes"] == 2 and 0 <= result["plan"]["success_rate"] <= 1
        assert result["tracking"]["starts"] == 2 and result["tracking"]["stay"]["rmse"] > 0
        assert result["quality"]["video_metrics"]["model"]["rf_fvd"] >= 0  # random-feature FVD, always
        assert Path(result["checkpoint"]).is_file()
        # Finished: a rerun reads cell.json and measures nothing.
        stamps = {p.name: p.stat().st_mtime_ns for p in cell_dir.glob("*.json")}
        assert run_cell(cfg) == json.loads(json.dumps(result))
        assert {p.name: p.stat().st_mtime_ns for p in cell_dir.glob("*.json")} == stamps
        # Interrupted after quality and sensitivity: only the plan runs again, to the same result.
        (cell_dir / "cell.json").unlink()
        (cell_dir / "plan.json").unlink()
        again = run_cell(cfg)
        assert (cell_dir / "quality.json").stat().st_mtime_ns == stamps["quality.json"]
        assert again["plan"]["success_rate"] == result["plan"]["success_rate"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["cell"] for r in rows] == ["x"] and float(rows[0]["psnr"]) == pytest.approx(result["quality"]["model"]["psnr"])
    md = (out / "sweep.md").read_text()
    assert "| x | `diffusion=x_cosine_ztsnr_uniform` |" in md and "| *random* | (baseline) |" in md
    oracle = json.loads((out / "baselines" / "oracle.json").read_text())
    assert oracle["episodes"] == 2 and f"| *oracle* | (baseline) | {oracle['success_rate']:.2f}" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # report.html: the table, the plot, and the cell's and the baselines' own plan reports
    linked = {f.relative_to(out).as_posix() for f in linked_files(out / "report.html")}
    assert linked == {"sweep.png", "cells/x/plan/report.html", "baselines/random/report.html",
                      "baselines/oracle/report.html"}
    linked_files(out / "cells" / "x" / "plan" / "report.html")


CODEC_OVERRIDES = {
    "trained_vae": ["train.steps=2", "train.block_out_channels=[8,8]", "train.norm_num_groups=4", "train.batch_size=4",
                    "train.max_val_frames=8", "train.scale_frames=16", "train.log_every=1", "train.checkpoint_every=1"],
    "jepa": ["model.patch_size=4", "model.width=16", "model.depth=1", "model.heads=2", "model.embed_dim=16",
             "model.history=2", "model.pred_width=16", "model.pred_depth=1", "model.pred_heads=2", "train.steps=2",
             "train.batch_size=8", "train.sigreg_directions=8", "train.val_clips=4", "train.scale_clips=8",
             "train.val_fraction=0.3", "train.checkpoint_every=0"],
}


@pytest.mark.parametrize("codec, patch", [("trained_vae", 2), ("jepa", 1)])
def test_latent_cell_trains_its_codec_first(codec, patch, wall_data, tmp_path):
    """codec: <name>: the codec is trained on the sweep's data once, and the world model uses it."""
    out = tmp_path / "sweep"
    tiny = [o for o in TINY_TRAIN if not o.startswith("latent")] + [f"model.patch_size={patch}"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        # The cell's own train overrides come last; the jepa cell's (training.max_steps=10000) made
        # this test train for 10 minutes, so the tiny settings replace them.
        cfg = compose("sweep", [*sweep_overrides(wall_data, out), "ablation=latent", f"cell={codec}",
                                f"train_overrides={quoted(tiny)}", f"codec_overrides.{codec}={quoted(CODEC_OVERRIDES[codec])}",
                                f"ablation.cells.{codec}.train={quoted(tiny)}", "budget.plan_episodes=0"])
        result = run_cell(cfg)
    assert (out / "codecs" / codec).is_dir() and result["plan"] is None
    # A VAE decodes (prediction quality); the JEPA is encode-only (action sensitivity in its latent).
    assert (result["quality"] is None) == (codec == "jepa") and result["sensitivity"]["latent_mse"]["zero"] >= 0
    from wmplan.rollout import WorldModel
    assert WorldModel.from_checkpoint(result["checkpoint"]).module.codec.cfg.name == codec


def test_jepa_predictor_cell_plans_with_the_codecs_own_predictor(wall_data, tmp_path):
    """world_model: codec: no NanoWM is trained; the JEPA codec's predictor is measured (action
    sensitivity in its latent) and plans, sharing the codec with the jepa cell."""
    out = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        codec = [o for o in CODEC_OVERRIDES["jepa"] if o != "train.steps=2"] + [  # enough to open adaLN-Zero's gates
            "train.steps=10", "train.warmup_steps=1", "train.lr=3e-3", "model.proprio_dim=null"]
        cfg = compose("sweep", [*sweep_overrides(wall_data, out), "ablation=latent", "cell=jepa_predictor",
                                f"codec_overrides.jepa={quoted(codec)}", "baselines=false",
                                f"plan_overrides={quoted([*TINY_PLAN, 'objective=dino_wm_default'])}"])  # + the proprio term
        result = run_cell(cfg)
    assert result["checkpoint"] == f"jepa:{(out / 'codecs' / 'jepa').absolute()}" and not (out / "models").exists()
    assert result["quality"] is None and result["tracking"] is None and result["sensitivity"]["sampler"] is None
    mse = result["sensitivity"]["latent_mse"]
    assert len({mse["ground_truth"], mse["zero"], mse["random"]}) == 3  # the predictor reads its actions
    assert result["plan"]["episodes"] == 2
    plan = json.loads((out / "cells" / "jepa_predictor" / "plan" / "results.json").read_text())
    assert plan["config"]["objective"]["proprio_weight"] == 1 and plan["config"]["world_model"] == result["checkpoint"]
    assert "world_model=codec (its own predictor)" in (out / "sweep.md").read_text()
    assert result["sensitivity"]["proprio_mse"]["zero"] >= 0  # the JEPA predicts proprio too
    # The codec's settings are recorded; a rerun that asks for other ones is refused, not served the old codec.
    assert json.loads((out / "codecs" / "jepa.overrides.json").read_text())[-len(codec):] == codec
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        other = compose("sweep", [*sweep_overrides(wall_data, out), "ablation=latent", "cell=jepa_predictor",
                                  f"codec_overrides.jepa={quoted([*codec, 'train.seed=1'])}", "baselines=false",
                                  f"plan_overrides={quoted([*TINY_PLAN, 'objective=dino_wm_default'])}"])
        (out / "cells" / "jepa_predictor" / "cell.json").unlink()
        with pytest.raises(ValueError, match=r"codec .*codecs/jepa was trained with \[.*this sweep asks for .*train.seed=1"):
            run_cell(other)


@pytest.mark.parametrize("spec, message", [
    ({"codec": "trained_vae", "world_model": "codec"}, "needs codec: jepa"),
    ({"codec": "jepa", "world_model": "codec", "train": ["model=tiny"]}, "needs codec: jepa and no train"),
    ({"codec": "jepa", "world_model": "nanowm"}, "world_model must be codec"),
])
def test_bad_world_model_cells_are_refused(spec, message):
    cfg = sweep_config(["ablation=latent", "cell=bad"])
    with open_dict(cfg):
        cfg.ablation.cells["bad"] = spec
    with pytest.raises(ValueError, match=message):
        cell_spec(cfg)


def test_vid2world_cell_pretrains_causalizes_and_evaluates_with_guidance(wall_data, tmp_path):
    """init: the ablation's action-free, non-causal model is trained once, then causalized and
    post-trained; the cell's sampler (guidance) is used for its measurements."""
    out = tmp_path / "sweep"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("sweep", [*sweep_overrides(wall_data, out), "ablation=vid2world", "cell=masked_guided",
                                "budget.pretrain_steps=2", "budget.plan_episodes=0", "budget.tracking_starts=0"])
        result = run_cell(cfg)
    from wmplan.checkpoint import read_checkpoint
    pre = read_checkpoint(out / "pretrain" / "checkpoints" / "latest.ckpt")["wmplan_config"]
    post = read_checkpoint(result["checkpoint"])["wmplan_config"]
    assert pre["model"]["causal"] is False and pre["diffusion"]["action_dropout"] == 1.0
    assert post["model"]["causal"] is True and post["training"]["causalize"] == "masked"
    assert result["quality"]["sampler"]["guidance_scale"] == 2.5 and result["sensitivity"]["sampler"]["guidance_scale"] == 2.5


def test_report_keeps_the_ablation_order(tmp_path):
    def cell(name, psnr):
        quality = {"model": {"psnr": psnr, "psnr_per_frame": [psnr + 1, psnr]}, "copy_last": {"psnr": 20.0, "psnr_per_frame": [21.0, 20.0]},
                   "reconstruction": {"psnr": 30.0, "psnr_per_frame": [30.0, 30.0]}}
        return {"ablation": "size", "cell": name, "env": "wall", "train": [f"model={name}"], "quality": quality,
                "sensitivity": {"latent_mse": {"ground_truth": 0.1, "zero": 0.3, "random": 0.5}},
                "plan": {"success_rate": 0.5, "success_ci95": [0.3, 0.7], "mean_final_distance": 2.0, "plan_time_mean_s": 1.5}}
    for name, psnr in (("mini", 25.0), ("tiny", 22.0)):
        (tmp_path / "cells" / name).mkdir(parents=True)
        (tmp_path / "cells" / name / "cell.json").write_text(json.dumps(cell(name, psnr)))
    (tmp_path / "baselines").mkdir()
    (tmp_path / "baselines" / "oracle.json").write_text(json.dumps(
        {"success_rate": 0.9, "success_ci95": [0.8, 1.0], "mean_final_distance": 0.5, "plan_time_mean_s": 0.2}))
    rows = write_report(tmp_path, ["tiny", "mini", "S"], "bigger is better")
    assert [r["cell"] for r in rows] == ["tiny", "mini"] and rows[1]["psnr_last_step"] == 25.0
    md = (tmp_path / "sweep.md").read_text()
    assert "Expected: bigger is better" in md and md.index("| tiny |") < md.index("| mini |")
    assert "| 0.50 [0.30-0.70] |" in md and "0.1 / 0.3 / 0.5" in md and "25.00 (20.00 / 30.00)" in md and "| *oracle* | (baseline) | 0.90 [0.80-1.00] |" in md
    assert [f.name for f in linked_files(tmp_path / "report.html")] == ["sweep.png"]  # no plan reports here
    text = parse(tmp_path / "report.html").text
    assert text.index("tiny") < text.index("mini") < text.index("oracle (baseline)") and "bigger is better" in " ".join(text)


def test_cell_setting_names_what_sets_a_cell_apart():
    guided = {"train": ["diffusion.action_dropout=0.2"], "init": "masked", "codec": None, "sampler": {"guidance_scale": 2.5}}
    assert cell_setting(guided) == "init=masked diffusion.action_dropout=0.2 sampler.guidance_scale=2.5"
    assert cell_setting({"train": [], "codec": "jepa", "init": None, "sampler": {}}) == "codec=jepa"
    assert cell_setting({"train": [], "sampler": {}}) == "(recipe)"
    predictor = {"train": [], "codec": "jepa", "world_model": "codec", "plan_overrides": ["objective=dino_wm_maze"]}
    assert cell_setting(predictor) == "codec=jepa world_model=codec (its own predictor) plan: objective=dino_wm_maze"


def test_multirun_command_runs_the_cells_then_reports(wall_data, tmp_path):
    """The local launcher path: `wmplan-sweep ablation=sampling_steps cell=1,3` trains one model
    and evaluates it twice; the end-of-multirun callback writes the report."""
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "wmplan.sweep", "ablation=sampling_steps", "cell=1,3",
            *sweep_overrides(wall_data, out), "budget.plan_episodes=0"]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(list((out / "models").iterdir())) == 1
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["cell"] for r in rows] == ["1", "3"] and rows[0]["success"] == ""
    assert "no MPC" in run.stdout


def test_slurm_launcher_config_composes():
    cfg = sweep_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.gpus_per_node == 1
