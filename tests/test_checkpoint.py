"""Checkpoints: safe loading, legacy upgrade, self-contained codecs, exact resume after SIGKILL,
and settings read from the checkpoint at plan time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import RESOLUTION, compose_config, train_config
from omegaconf import OmegaConf

import wmplan.train
from wmplan.checkpoint import read_checkpoint, upgrade
from wmplan.data.collect import collect
from wmplan.envs.config import load_env_config
from wmplan.models.codecs import CodecConfig, build_codec
from wmplan.planners.evaluate import evaluate
from wmplan.rollout import WorldModel


def plan_config(world_model, out_dir, *extra: str):
    """One short episode of the default plan config: no sampler or history overrides."""
    return compose_config("plan", [
        f"world_model={world_model}", f"out_dir={out_dir}", f"env.resolution={RESOLUTION}", "episodes=1",
        "budget_env_steps=10", "horizon=2", "videos=0", "progress=false",
        "planner.num_samples=4", "planner.topk=2", "planner.iterations=1", *extra,
    ])


def assert_same_state(a: dict, b: dict) -> None:
    """Model, EMA, buffers and optimizer state bit for bit."""
    assert a["global_step"] == b["global_step"]
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys() and any(k.startswith("ema.") for k in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    for group_a, group_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in group_a:
            assert torch.equal(torch.as_tensor(group_a[key]), torch.as_tensor(group_b[key])), key


class Evil:
    """Unpickling this creates ``path``: what a malicious checkpoint could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_checkpoints_load_with_weights_only(checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {"wmplan_config", "state_dict", "codec_architecture", "rng_state", "optimizer_states"} <= ckpt.keys()
    assert isinstance(ckpt["rng_state"]["numpy"]["keys"], torch.Tensor)


def test_a_checkpoint_that_runs_code_is_refused_and_runs_nothing(checkpoint, tmp_path, wall_data):
    marker = tmp_path / "pwned"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["extra"] = Evil(marker)
    bad = tmp_path / "run" / "checkpoints" / "latest.ckpt"
    bad.parent.mkdir(parents=True)
    torch.save(ckpt, bad)
    for load in (read_checkpoint, lambda p: read_checkpoint(p, allow_legacy=True), WorldModel.from_checkpoint,
                 lambda p: wmplan.train.train(train_config(wall_data, tmp_path / "run", 6))):
        with pytest.raises(ValueError, match="pickled"):
            load(bad)
        assert not marker.exists()


def test_an_old_pickled_checkpoint_is_refused_with_how_to_upgrade(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt["rng_state"]["numpy"] = np.random.get_state()  # how checkpoints stored it before
    del ckpt["codec_architecture"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    with pytest.raises(ValueError, match=r"python -m wmplan\.checkpoint upgrade .*old\.ckpt"):
        WorldModel.from_checkpoint(old)
    subprocess.run([sys.executable, "-m", "wmplan.checkpoint", "upgrade", str(old)], check=True, capture_output=True)
    upgraded = torch.load(old, map_location="cpu", weights_only=True)
    assert upgraded["rng_state"]["numpy"]["pos"] == ckpt["rng_state"]["numpy"][2]
    wm = WorldModel.from_checkpoint(old)
    reference = WorldModel.from_checkpoint(checkpoint)
    for (name, a), b in zip(wm.model.state_dict().items(), reference.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_truncated_and_foreign_files_are_named(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or not a torch file"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a wmplan world-model checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        read_checkpoint(tmp_path / "missing.ckpt")


KILL_AFTER_PERIODIC_SAVE = textwrap.dedent("""
    import os, signal, sys
    from omegaconf import OmegaConf
    import wmplan.train

    kill_at = int(sys.argv[2])
    save = wmplan.train.AtomicCheckpoints.save

    def save_then_die(self, trainer, name):
        path = save(self, trainer, name)
        if name == "latest.ckpt" and trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint
        return path

    wmplan.train.AtomicCheckpoints.save = save_then_die
    wmplan.train.train(OmegaConf.load(sys.argv[1]))
""")


def test_resume_after_sigkill_is_bit_exact_with_ema(wall_data, tmp_path):
    full = read_checkpoint(wmplan.train.train(train_config(wall_data, tmp_path / "full", 6)))
    cfg = train_config(wall_data, tmp_path / "killed", 6)
    OmegaConf.save(cfg, tmp_path / "killed.yaml")
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_PERIODIC_SAVE)
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "killed.yaml"), "4"], capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    periodic = read_checkpoint(tmp_path / "killed" / "checkpoints" / "latest.ckpt")
    assert periodic["global_step"] == 4 and int(periodic["state_dict"]["ema.n_averaged"]) == 4
    resumed = read_checkpoint(wmplan.train.train(cfg))
    assert int(resumed["state_dict"]["ema.n_averaged"]) == 6
    assert_same_state(full, resumed)


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  block_out_channels=(8, 8), norm_num_groups=8, latent_channels=4, sample_size=RESOLUTION,
                  scaling_factor=0.5).save_pretrained(folder)
    return folder


def test_a_moved_trained_vae_checkpoint_loads_and_plans_without_its_vae_folder(wall_data, vae_folder, tmp_path):
    vae_copy = tmp_path / "vae"
    shutil.copytree(vae_folder, vae_copy)
    latest = wmplan.train.train(train_config(wall_data, tmp_path / "run", 2, "latent=trained_vae",
                                             f"latent.path={vae_copy}", f"latent.image_size={RESOLUTION}"))
    moved = tmp_path / "elsewhere" / "model.ckpt"
    moved.parent.mkdir()
    shutil.move(latest, moved)
    shutil.rmtree(vae_copy)
    shutil.rmtree(tmp_path / "run")
    wm = WorldModel.from_checkpoint(moved)
    assert wm.module.codec.latent_shape == (4, RESOLUTION // 2, RESOLUTION // 2)
    frames = torch.randint(0, 256, (1, 2, RESOLUTION, RESOLUTION, 3), dtype=torch.uint8)
    original = build_codec(CodecConfig(name="trained_vae", path=str(vae_folder), image_size=RESOLUTION))
    torch.testing.assert_close(wm.module.codec.encode(frames), original.encode(frames), rtol=0, atol=0)
    results = evaluate(plan_config(moved, tmp_path / "plan"))
    assert results["episodes"] == 1


def test_a_flow_checkpoint_plans_with_no_sampler_override(wall_data, tmp_path):
    latest = wmplan.train.train(train_config(wall_data, tmp_path / "run", 2, "diffusion=flow"))
    wm = WorldModel.from_checkpoint(latest)
    assert wm.sampler.sampler == "euler" and wm.sampler.context_noise_level == 0.02
    assert evaluate(plan_config(latest, tmp_path / "plan"))["episodes"] == 1
    with pytest.raises(ValueError, match="sampler.sampler='ddim' contradicts the model: its objective 'flow'"):
        evaluate(plan_config(latest, tmp_path / "plan", "+sampler.sampler=ddim"))


@pytest.fixture(scope="module")
def pusht_run(tmp_path_factory):
    """A 2-step tiny PushT model (3 context frames, the env's protocol history) and the
    context lengths its validation predicted from."""
    root = tmp_path_factory.mktemp("pusht")
    data = collect(load_env_config("pusht", resolution=RESOLUTION, episode_length=40), 4, "random", 0,
                   root / "data", progress=False)
    validation_contexts = []
    predict = wmplan.train.WorldModelModule.predict_clip

    def spy(self, latents, actions, proprio, context_frames, *args, **kwargs):
        validation_contexts.append(context_frames)
        return predict(self, latents, actions, proprio, context_frames, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wmplan.train.WorldModelModule, "predict_clip", spy)
        latest = wmplan.train.train(train_config(data, root / "run", 2, "env=pusht", f"env.resolution={RESOLUTION}",
                                                 "data.num_frames=5"))
    return latest, validation_contexts


def test_a_three_context_frame_pusht_checkpoint_plans_with_its_own_history(pusht_run, tmp_path, monkeypatch):
    latest, validation_contexts = pusht_run
    assert read_checkpoint(latest)["wmplan_config"]["diffusion"]["context_frames"] == 3
    assert validation_contexts and set(validation_contexts) == {3}  # validation continues 3 frames too
    assert WorldModel.from_checkpoint(latest).context_frames == 3
    seen = []
    rollout = WorldModel.rollout

    def spy(self, context, actions, **kwargs):
        seen.append(context["latents"].shape[1])
        return rollout(self, context, actions, **kwargs)

    monkeypatch.setattr(WorldModel, "rollout", spy)
    results = evaluate(plan_config(latest, tmp_path / "plan", "env=pusht"))
    assert results["episodes"] == 1 and seen and set(seen) == {3}
    with pytest.raises(ValueError, match="history=1 contradicts checkpoint .* diffusion.context_frames=3"):
        evaluate(plan_config(latest, tmp_path / "plan", "env=pusht", "history=1"))
    with pytest.raises(ValueError, match="context_noise_level=0.1 contradicts the model, trained at "
                                         "diffusion.context_noise_level=0.02"):
        evaluate(plan_config(latest, tmp_path / "plan", "env=pusht", "+sampler.context_noise_level=0.1"))


def test_a_non_causal_model_trains_and_samples_whole_windows(wall_data, tmp_path):
    latest = wmplan.train.train(train_config(wall_data, tmp_path / "run", 2, "model.causal=false"))
    wm = WorldModel.from_checkpoint(latest)
    assert not wm.model.causal
    lengths = []
    forward = wm.model.forward
    wm.model.forward = lambda x, *a, **k: lengths.append(x.shape[1]) or forward(x, *a, **k)
    obs = {"pixels": np.zeros((1, RESOLUTION, RESOLUTION, 3), np.uint8),
           "proprio": np.zeros((1, wm.module.cfg.model.proprio_dim), np.float32)}
    from wmplan.models.sampling import SamplerConfig

    out = wm.rollout(wm.encode(obs), torch.zeros(1, 2, 4, wm.action_dim),
                     sampler=SamplerConfig(steps=2, schedule="sequential"))
    assert out["latents"].shape[:3] == (1, 2, 4) and torch.isfinite(out["latents"]).all()
    assert set(lengths) == {wm.window}  # every call sees the whole window, noisy future included


def test_bad_input_ends_a_cli_with_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "wmplan.planners.evaluate", "world_model=/nonexistent/latest.ckpt",
                          f"out_dir={tmp_path}"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "wmplan-plan: error: world-model checkpoint not found: " \
                                                  "/nonexistent/latest.ckpt"
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("override,message", [("training.batch_size=abc", "training.batch_size must be an int >= 1, "
                                                                          "got 'abc'"),
                                              ("training.lr=fast", "training.lr must be a number, got 'fast'"),
                                              ("data.num_frames=1", "data.num_frames must be an int >= 2, got 1")])
def test_wrong_type_overrides_are_named(wall_data, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        wmplan.train.train(train_config(wall_data, tmp_path / "run", 2, override))
    assert not (tmp_path / "run").exists()
