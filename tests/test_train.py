"""wmplan.train.train: outputs, checkpoint contents, resume == uninterrupted, config checks."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import train_config
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

import wmplan.train
from wmplan.config_dir import CONFIG_DIR
from wmplan.data.dataset import load_dataset_info
from wmplan.models.codecs import CodecConfig
from wmplan.models.diffusion import Diffusion, DiffusionConfig
from wmplan.models.nanowm import NanoWM, NanoWMConfig


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    """Model, EMA and buffers equal to within 1e-6 (in practice bitwise)."""
    assert a["global_step"] == b["global_step"]
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    assert any(k.startswith("ema.") for k in sa) and any(k.startswith("model.") for k in sa)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-6, msg=key)


class StopAt(Callback):
    """Stops training gracefully once ``step`` optimizer steps are done (an interruption)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def interrupted_at(monkeypatch, step: int) -> None:
    original = wmplan.train.build_trainer

    def build(cfg, out_dir):
        trainer = original(cfg, out_dir)
        trainer.callbacks.insert(0, StopAt(step))
        return trainer

    monkeypatch.setattr(wmplan.train, "build_trainer", build)


def test_training_writes_checkpoint_logs_and_samples(trained_run, checkpoint, wall_data):
    ckpt_dir = trained_run / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest.ckpt"]  # no temp file left behind
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    gifs = sorted(p.name for p in (trained_run / "samples").glob("*.gif"))
    assert gifs == ["step0000002.gif", "step0000004.gif"]  # validation every 2 steps
    ckpt = load(checkpoint)
    assert ckpt["global_step"] == 4
    cfg = ckpt["wmplan_config"]
    info = load_dataset_info(wall_data)
    assert cfg["env"]["id"] == info["env_id"] == "wmplan/Wall-v0"
    # Dims filled from the codec (pixels at 8x8, RGB) and the dataset (Wall: A=2, frameskip 5).
    assert (cfg["model"]["latent_channels"], cfg["model"]["latent_size"]) == (3, 8)
    assert cfg["model"]["action_dim"] == info["action_dim"] * 5 == 10
    assert cfg["model"]["proprio_dim"] == info["proprio_dim"] > 0
    assert cfg["model"]["width"] == 64  # model=tiny
    # Proprio statistics were set from the data, and the EMA saw one update per step.
    state = ckpt["state_dict"]
    assert not torch.equal(state["proprio_std"], torch.ones_like(state["proprio_std"]))
    assert int(state["ema.n_averaged"]) == 4
    assert not torch.equal(state["ema.module.patch_embed.weight"], state["model.patch_embed.weight"])


def test_interrupted_and_resumed_run_equals_uninterrupted(wall_data, tmp_path, monkeypatch):
    full = load(wmplan.train.train(train_config(wall_data, tmp_path / "full", 6)))
    interrupted_at(monkeypatch, 3)
    half = load(wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 6)))
    assert half["global_step"] == 3
    monkeypatch.undo()
    resumed = load(wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 6)))
    assert_same_weights(full, resumed)
    # The second half really trained: weights moved away from the step-3 checkpoint.
    assert not torch.equal(half["state_dict"]["model.patch_embed.weight"], resumed["state_dict"]["model.patch_embed.weight"])


def test_extending_max_steps_equals_one_long_run(wall_data, tmp_path):
    # The cosine schedule is a function of max_steps, so a run stopped at N/2 by max_steps=N/2
    # has a different LR history from a run with max_steps=N; a constant LR after warmup
    # (min_lr_ratio=1) makes the schedule independent of max_steps.
    constant = ("training.min_lr_ratio=1.0",)
    full = load(wmplan.train.train(train_config(wall_data, tmp_path / "full", 6, *constant)))
    wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 3, *constant))
    resumed = load(wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 6, *constant)))
    assert_same_weights(full, resumed)


def test_gradient_accumulation(wall_data, tmp_path, monkeypatch):
    seeds = []
    original = wmplan.train.WorldModelModule._step_generator

    def spy(self, device, batch_idx=0):
        generator = original(self, device, batch_idx)
        seeds.append(generator.initial_seed())
        return generator

    monkeypatch.setattr(wmplan.train.WorldModelModule, "_step_generator", spy)
    acc = ("training.accumulate_grad_batches=2",)
    full = load(wmplan.train.train(train_config(wall_data, tmp_path / "full", 4, *acc)))
    assert full["global_step"] == 4  # optimizer steps, not micro-batches
    assert len(seeds) == 8 and len(set(seeds)) == 8  # every micro-batch draws its own noise
    assert int(full["state_dict"]["ema.n_averaged"]) == 4  # EMA updated once per optimizer step
    for tensor in full["state_dict"].values():
        assert torch.isfinite(tensor.float()).all()
    # Resuming mid-run with accumulation continues the same micro-batch stream.
    interrupted_at(monkeypatch, 2)
    wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 4, *acc))
    monkeypatch.undo()
    resumed = load(wmplan.train.train(train_config(wall_data, tmp_path / "resumed", 4, *acc)))
    assert_same_weights(full, resumed)


def test_resume_with_other_model_config_is_refused(trained_run, tmp_path, wall_data):
    out = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", out / "checkpoints")
    with pytest.raises(ValueError, match=r"model\.width: checkpoint=64 config=32"):
        wmplan.train.train(train_config(wall_data, out, 6, "model.width=32"))


def test_dataset_from_another_env_is_refused(wall_data, tmp_path):
    cfg = train_config(wall_data, tmp_path / "run", 2, "env=pusht", f"env.resolution={16}")
    with pytest.raises(ValueError, match="collected on wmplan/Wall-v0.*wmplan/PushT-v0"):
        wmplan.train.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_experiment_recipes_build_a_model(experiment):
    """Every experiment recipe composes into a valid codec, NanoWM (on the meta device) and diffusion."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
        vae = compose("train_vae", overrides=[f"env={cfg.env.name}"]).train
        jepa = compose("train_jepa", overrides=[f"env={cfg.env.name}"]).model
    assert cfg.env.name in experiment  # wall_random_door, vid2world_wall, wall_jepa
    latent = CodecConfig(**OmegaConf.to_container(cfg.latent, resolve=True))
    # the latent side the codec will give: pixels are resized, the trained VAE downsamples, the
    # JEPA gives one embed_dim token per frame
    side = {"pixels": latent.pixel_size, "jepa": 1}.get(latent.name, cfg.env.resolution // 2 ** (len(vae.block_out_channels) - 1))
    channels = {"pixels": 3, "jepa": jepa.embed_dim}.get(latent.name, vae.latent_channels)
    model = {**OmegaConf.to_container(cfg.model), "latent_channels": channels, "latent_size": side}
    with torch.device("meta"):
        NanoWM(NanoWMConfig(**model))
    Diffusion(DiffusionConfig(**cfg.diffusion))


def test_training_compile_compiles_the_denoiser_in_place(wall_data, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    cfg = train_config(wall_data, tmp_path / "run", 2, "training.compile=true")
    codec = wmplan.train.build_codec(CodecConfig(**cfg.latent))
    module = wmplan.train.WorldModelModule(wmplan.train.complete_config(cfg, codec), codec=codec)
    assert compiled == ["NanoWM"] and all(k.startswith(("model.", "ema.", "codec.", "proprio"))
                                           for k in module.state_dict())  # keys unchanged
    off = train_config(wall_data, tmp_path / "run", 2)
    wmplan.train.WorldModelModule(wmplan.train.complete_config(off, codec), codec=codec)
    assert compiled == ["NanoWM"]  # off by default


def test_vid2world_pretrain_action_free_then_post_train_causalized(wall_data, tmp_path, monkeypatch):
    """An action-free, non-causal pretrained model (temporal conv on) starts a causal run:
    its EMA weights, causalized with the chosen transfer, are the run's first weights."""
    from wmplan.models.causalize import causalize
    from wmplan.rollout import WorldModel

    arch = ["+model.temporal_conv=3"]
    pretrained = wmplan.train.train(train_config(wall_data, tmp_path / "pre", 2, *arch, "model.causal=false",
                                                 "diffusion.action_dropout=1.0"))
    expected = causalize(WorldModel.from_checkpoint(pretrained).module.ema.module, "extrapolative").state_dict()
    seen = {}
    original = wmplan.train.init_weights

    def spy(module, checkpoint, transfer):
        original(module, checkpoint, transfer)
        seen.update(model={k: v.clone() for k, v in module.model.state_dict().items()},
                    ema={k: v.clone() for k, v in module.ema.module.state_dict().items()})

    monkeypatch.setattr(wmplan.train, "init_weights", spy)
    post = ["training.init_from=" + str(pretrained), "training.causalize=extrapolative", "diffusion.action_dropout=0.2"]
    wmplan.train.train(train_config(wall_data, tmp_path / "post", 2, *arch, *post))
    for key, value in expected.items():
        assert torch.equal(seen["model"][key], value) and torch.equal(seen["ema"][key], value), key
    # Without causalize the architectures differ in `causal`; causalize needs a model to start from.
    with pytest.raises(ValueError, match=r"differs from this run's in causal \(False vs True\).*training.causalize"):
        wmplan.train.train(train_config(wall_data, tmp_path / "bad", 2, *arch, "training.init_from=" + str(pretrained)))
    with pytest.raises(ValueError, match="training.causalize needs training.init_from"):
        wmplan.train.train(train_config(wall_data, tmp_path / "bad2", 2, *arch, "training.causalize=masked"))


def test_vid2world_recipes_pretrain_then_post_train(wall_data, tmp_path):
    """experiment=vid2world_wall_pretrain, then experiment=vid2world_wall from its checkpoint:
    causalized, action dropout 0.2, validated with causal action guidance (scale 2.5)."""
    from wmplan.rollout import WorldModel

    tiny = ["model.patch_size=2"]
    pretrained = wmplan.train.train(train_config(wall_data, tmp_path / "pre", 2, "experiment=vid2world_wall_pretrain", *tiny))
    pre_cfg = WorldModel.from_checkpoint(pretrained).module.cfg
    assert not pre_cfg.model.causal and pre_cfg.model.temporal_conv == 3 and pre_cfg.diffusion.action_dropout == 1.0
    with pytest.raises(ValueError, match="needs training.init_from"):  # stage 2 needs stage 1's checkpoint
        wmplan.train.train(train_config(wall_data, tmp_path / "no_init", 2, "experiment=vid2world_wall", *tiny))
    post = wmplan.train.train(train_config(wall_data, tmp_path / "post", 2, "experiment=vid2world_wall", *tiny,
                                           f"training.init_from={pretrained}"))
    cfg = WorldModel.from_checkpoint(post).module.cfg
    assert cfg.model.causal and cfg.model.temporal_conv == 3 and cfg.diffusion.action_dropout == 0.2
    assert cfg.training.causalize == "extrapolative" and cfg.validation.sampler.guidance_scale == 2.5
