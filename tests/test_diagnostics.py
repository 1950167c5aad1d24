"""Diagnostics on a tiny trained Wall world model (16 px, tiny NanoWM, 8x8 pixel latents)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from wmplan.config_dir import CONFIG_DIR
from wmplan.data.collect import collect
from wmplan.diagnostics import (
    action_sensitivity,
    denoising_error,
    held_action_plans,
    plan_tracking,
    prediction_quality,
    reference_sampler,
    validation_clips,
)
from wmplan.envs.config import load_env_config
from wmplan.train_vae import VAETrainConfig
from wmplan.rollout import WorldModel
from wmplan.train import train

RESOLUTION = 16
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    env_cfg = load_env_config("wall", resolution=RESOLUTION, episode_length=30)
    return collect(env_cfg, 8, "random", 0, tmp_path_factory.mktemp("data") / "wall", progress=False)


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    overrides = [
        f"env.resolution={RESOLUTION}", "model=tiny", "latent.pixel_size=8",
        f"data.path={dataset}", f"out_dir={out}", "training.max_steps=10", "training.batch_size=4",
        "training.warmup_steps=2", "validation.every_n_steps=1000", "logging.progress_every=0",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return train(cfg)


@pytest.fixture(scope="module")
def wm(checkpoint) -> WorldModel:
    return WorldModel.from_checkpoint(checkpoint)


def hand_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of uint8 images, identical images capped at a one-level difference in one value."""
    mse = max(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2), 1.0 / a.size)
    return 10 * math.log10(255.0**2 / mse)


def test_prediction_quality(wm, dataset):
    sampler = reference_sampler(wm, steps=2)
    result = prediction_quality(wm, dataset, n_clips=6, sampler=sampler, batch_size=4)
    assert result["clips"] == 6 and result["predicted_frames"] == 3
    for name in ("model", "copy_last", "reconstruction"):
        scores = result[name]
        assert math.isfinite(scores["psnr"]) and -1 <= scores["ssim"] <= 1
        assert len(scores["psnr_per_frame"]) == 3 and len(scores["ssim_per_frame"]) == 3
        assert scores["psnr"] == pytest.approx(np.mean(scores["psnr_per_frame"]))
    clips = validation_clips(wm, dataset, 6, 4, seed=42)["pixels"].numpy()  # [6, 4, H, W, 3]
    expected = [np.mean([hand_psnr(c[0], c[i]) for c in clips]) for i in (1, 2, 3)]
    assert result["copy_last"]["psnr_per_frame"] == pytest.approx(expected, rel=1e-9)
    assert prediction_quality(wm, dataset, n_clips=6, sampler=sampler, batch_size=4) == result


def test_action_sensitivity(wm, dataset):
    result = action_sensitivity(wm, dataset, n_clips=6, seed=3, batch_size=4)
    assert set(result["latent_mse"]) == {"ground_truth", "zero", "random", "context"}
    assert set(result["action_embedding_rms"]) == {"ground_truth", "zero", "random"}
    assert set(result["proprio_mse"]) == {"ground_truth", "zero", "random", "context"}
    values = [*result["latent_mse"].values(), *result["proprio_mse"].values(), *result["action_embedding_rms"].values()]
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert result["action_embedding_rms"]["random"] > 0
    clips = validation_clips(wm, dataset, 6, 4, seed=3)
    proprio = wm.encode({"pixels": clips["pixels"], "proprio": clips["proprio"]})["proprio"]  # [6, 4, P]
    assert result["proprio_mse"]["context"] == pytest.approx(float(((proprio[:, 0] - proprio[:, -1]) ** 2).mean()), rel=1e-5)
    assert action_sensitivity(wm, dataset, n_clips=6, seed=3, batch_size=4) == result


def test_wrong_dataset_env_is_refused(wm, tmp_path):
    other = collect(load_env_config("pusht", resolution=RESOLUTION, episode_length=8), 1, "pusher", 0,
                    tmp_path / "pusht", progress=False)
    with pytest.raises(ValueError, match="trained on"):
        prediction_quality(wm, other, n_clips=2)


def test_bench_vae_times_a_training_step():
    bench = load_script("bench_vae")
    cfg = VAETrainConfig(block_out_channels=(8, 16), norm_num_groups=8, batch_size=2, log_every=10**9)
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    assert all(bench.seconds_per_step(dataclasses.replace(cfg, precision=p), frames, 1) > 0 for p in ("32", "bf16-mixed"))


def test_bench_replan_timing_runs():
    bench = load_script("bench_plan")
    wm = bench.random_world_model(["model=tiny", f"env.resolution={RESOLUTION}", "latent.pixel_size=8"], precision="fp32")
    planner = {"name": "cem", "num_samples": 8, "topk": 2, "iterations": 4}
    for path, steps in (("legacy", 3), ("cached", 3), ("default", 1)):
        seconds, timed = bench.time_replan(wm, planner, episodes=2, horizon=3, path=path, steps=steps)
        assert seconds > 0 and math.isfinite(seconds) and timed == 4
        scaled, timed = bench.time_replan(wm, planner, episodes=2, horizon=3, path=path, steps=steps, max_seconds=0)
        assert scaled > 0 and timed == 1
        assert bench.rollout_flops(wm, path, steps, horizon=3, candidates=4) > 0
    # Fewer steps and the context cache cost fewer FLOPs per candidate.
    assert bench.rollout_flops(wm, "default", 3, 3, 4) > 2.5 * bench.rollout_flops(wm, "default", 1, 3, 4)
    assert bench.rollout_flops(wm, "default", 1, 3, 4) < bench.rollout_flops(wm, "legacy", 1, 3, 4)
    assert bench.tokens_per_frame(wm) == (8 // 2) ** 2 + 1  # 4x4 patches + one proprio token


def test_denoising_error(wm, dataset):
    result = denoising_error(wm, dataset, n_clips=6, seed=3, levels=(0.01, 0.5, 0.999), batch_size=4)
    mse = result["x0_mse"]
    assert list(mse) == ["0.01", "0.5", "0.999"] and all(math.isfinite(v) and v >= 0 for v in mse.values())
    # Near zero noise x0_hat is x_t up to a small correction; near pure noise it is all model.
    assert mse["0.01"] < mse["0.999"]
    clips = validation_clips(wm, dataset, 6, wm.window, seed=3)
    latents = wm.encode({"pixels": clips["pixels"], "proprio": clips["proprio"]})["latents"]
    assert result["copy_last"] == pytest.approx(float(((latents[:, :1] - latents[:, 1:]) ** 2).mean()), rel=1e-5)
    assert denoising_error(wm, dataset, n_clips=6, seed=3, levels=(0.01, 0.5, 0.999), batch_size=4) == result


@pytest.fixture(scope="module")
def env():
    return load_env_config("wall", resolution=RESOLUTION).make()


def test_held_action_plans_follow_the_true_dynamics(env):
    held, states = held_action_plans(env, n_starts=3, n_plans=2, length=4, frameskip=5, seed=1)
    assert held.shape == (3, 2, 2) and states.shape == (3, 2, 5, 3)
    assert np.all(np.abs(held) <= 1)
    again = env.unwrapped.simulate(states[1, 0, 0], np.repeat(held[1, 0][None], 20, axis=0))[::5]
    np.testing.assert_array_equal(states[1, 0], again)
    assert not np.allclose(states[:, :, 0], states[:, :, -1])  # held actions move the dot


def test_plan_tracking(wm, env, monkeypatch):
    result = plan_tracking(wm, env, n_starts=3, n_plans=2, horizon=3, seed=5)
    for name in ("model", "stay"):
        e = result[name]
        assert len(e["rmse_per_step"]) == 3 and len(e["rmse_per_dim"]) == 2
        assert math.isfinite(e["rmse"]) and e["rmse"] == pytest.approx(np.sqrt(np.mean(np.square(e["rmse_per_step"]))))
    assert result["stay"]["rmse"] > 0  # the plans move the dot
    assert plan_tracking(wm, env, n_starts=3, n_plans=2, horizon=3, seed=5) == result
    assert plan_tracking(wm, n_starts=3, n_plans=2, horizon=3, seed=5) == result  # the checkpoint's own env

    def predict_stay(context, actions, sampler=None, seed=0):  # a model that predicts no motion
        b, s, h, _ = actions.shape
        return {"latents": None, "proprio": context["proprio"][:, -1, None, None].expand(b, s, h, -1)}

    monkeypatch.setattr(wm, "rollout", predict_stay)
    stay = plan_tracking(wm, env, n_starts=3, n_plans=2, horizon=3, seed=5)
    assert stay["model"]["rmse_per_step"] == pytest.approx(stay["stay"]["rmse_per_step"], rel=1e-5)


def test_plan_tracking_refuses_bad_input(wm, env, monkeypatch):
    with pytest.raises(ValueError, match="env id"):
        plan_tracking(wm, load_env_config("pointmaze_umaze", resolution=RESOLUTION).make(), n_starts=1, n_plans=1)
    with pytest.raises(ValueError, match="n_starts, n_plans and horizon >= 1"):
        plan_tracking(wm, env, n_starts=0)
    monkeypatch.setattr(wm, "uses_proprio", False)
    with pytest.raises(ValueError, match="has none"):
        plan_tracking(wm, env)


def test_eval_script_writes_json(checkpoint, dataset, capsys):
    script = load_script("eval_world_model")
    out = script.main(["--checkpoint", str(checkpoint), "--dataset", str(dataset), "--clips", "4", "--steps", "2"])
    assert out.is_file() and out.parent == checkpoint.parent
    assert "copy-last" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["prediction_quality"]["clips"] == 4 and "action_sensitivity" in data
    assert data["denoising_error"]["clips"] == 4
    assert data["prediction_quality"]["context_frames"] == 1
    assert data["plan_tracking"]["starts"] == 4 and data["plan_tracking"]["model"]["rmse"] >= 0
    out = script.main(["--checkpoint", str(checkpoint), "--dataset", str(dataset), "--clips", "4", "--steps", "2",
                       "--context", "2", "--out", str(checkpoint.with_name("context2.json"))])
    assert json.loads(out.read_text())["prediction_quality"]["context_frames"] == 2


def test_latent_landscape_pairs_env_and_latent_distances(checkpoint, dataset, capsys):
    script = load_script("latent_landscape")
    wm = script.load_model(str(checkpoint))
    pairs = script.landscape(wm, str(dataset), frames=16, pairs=200, seed=0)
    assert set(pairs) == {"env", "latent", "proprio"} and len({len(v) for v in pairs.values()}) == 1
    assert (pairs["env"] >= 0).all() and (pairs["latent"] >= 0).all() and pairs["env"].max() > 0
    again = script.landscape(wm, str(dataset), frames=16, pairs=200, seed=0)
    assert all(np.array_equal(pairs[k], again[k]) for k in pairs)  # seeded
    # The proprio is the dot's position: its distance ranks pairs exactly as the env's does.
    from scipy.stats import spearmanr
    assert spearmanr(pairs["env"], pairs["proprio"])[0] > 0.99
    script.main(["--world-model", str(checkpoint), "--dataset", str(dataset), "--frames", "16", "--pairs", "200",
                 "--probe-frames", "64", "--angle-dims", "2"])
    printed = capsys.readouterr().out
    assert "latent: Spearman with env distance" in printed and "proprio: Spearman" in printed
    assert "state[0]: RMSE" in printed and "state[2]: angle error median" in printed


def test_state_probe_reads_what_the_latent_holds(checkpoint, dataset):
    """A latent that is the dot's position (Wall's proprio) is probed exactly; a pixel model's
    latent gives finite errors; a dimension read as an angle is scored in degrees; seeded."""
    script = load_script("latent_landscape")

    class PositionLatent:  # encodes each frame as the dot's xy: [N, 2, 1, 1]
        def encode(self, obs):
            return {"latents": torch.as_tensor(obs["proprio"]).float()[:, :, None, None], "proprio": None}

    exact = script.state_probe(PositionLatent(), str(dataset), train_frames=160, val_frames=40, seed=0, angle_dims=[2])
    assert set(exact) == {0, 1, 2} and all(exact[d]["rmse"] < 1e-2 * exact[d]["std"] for d in (0, 1))
    assert exact[2]["median_deg"] < 1e-6  # the door's y (a constant here), read as an angle
    wm = script.load_model(str(checkpoint))
    probe = script.state_probe(wm, str(dataset), train_frames=160, val_frames=40, seed=0, ridge=1.0, angle_dims=[2])
    assert all(np.isfinite(probe[d]["rmse"]) for d in (0, 1)) and 0 <= probe[2]["median_deg"] <= probe[2]["p90_deg"] <= 180
    assert probe == script.state_probe(wm, str(dataset), train_frames=160, val_frames=40, seed=0, ridge=1.0, angle_dims=[2])
