"""JEPA (LeWorldModel-style) on tiny Wall data: SIGReg, training (loss, seed, resume), the saved
folder, the `jepa` codec under NanoWM, and the predictor planning through wmplan-plan."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import RESOLUTION, TRAIN_OVERRIDES, compose_config
from omegaconf import OmegaConf
from safetensors import safe_open
from test_plan_cli import EPISODES, plan_config

import wmplan.train
import wmplan.train_jepa as train_jepa_module
from wmplan.data.dataset import ClipDataset
from wmplan.jepa_world_model import JEPAWorldModel
from wmplan.models.codecs import CodecConfig, build_codec
from wmplan.models.jepa import JEPA, JEPAConfig, jepa_loss, load_jepa, save_jepa, sigreg, sigreg_null_mean
from wmplan.models.nanowm import NanoWM, NanoWMConfig
from wmplan.planners import build_planner
from wmplan.planners.evaluate import evaluate, scale_sigma
from wmplan.train_jepa import JEPATrainConfig, train_jepa

TINY = dict(patch_size=4, width=16, depth=1, heads=2, embed_dim=16, num_tokens=1, history=2,
            pred_width=16, pred_depth=1, pred_heads=2, mlp_ratio=2.0)
ENV = {"id": "wmplan/Wall-v0", "frameskip": 5, "resolution": RESOLUTION}


def tiny_training(**kw) -> JEPATrainConfig:
    settings = dict(steps=40, batch_size=8, lr=3e-3, warmup_steps=2, sigreg_weight=1.0, sigreg_directions=32, val_clips=16,
                    scale_clips=32, val_fraction=0.3, device="cpu", precision="fp32", log_every=1000,
                    checkpoint_every=0)
    return JEPATrainConfig(**{**settings, **kw})


def weights(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_equal_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def jepa_folder(wall_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("jepa") / "wall"
    metrics = train_jepa(wall_data, out, TINY, tiny_training(), ENV)
    return out, metrics


# -- SIGReg ---------------------------------------------------------------------------------
def test_sigreg_is_at_its_null_mean_for_gaussians_and_large_for_collapse():
    g = torch.Generator().manual_seed(0)
    null = sigreg_null_mean()
    assert null == pytest.approx(math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3), rel=0.02)  # the exact integral
    gaussian = np.mean([sigreg(torch.randn(8, 256, 16, generator=g), 64, generator=g).item() for _ in range(10)])
    assert gaussian == pytest.approx(null, rel=0.1)  # N * distance stays O(1): the distance itself is ~0
    assert gaussian / 256 < 0.01
    collapsed = sigreg(torch.zeros(256, 16) + 0.3, 64, generator=g).item()
    wide = sigreg(3 * torch.randn(256, 16, generator=g), 64, generator=g).item()
    shifted = sigreg(torch.randn(256, 16, generator=g) + 2, 64, generator=g).item()
    assert min(collapsed, wide, shifted) > 20 * null
    # Differentiable, and its gradient spreads a collapsed batch out.
    z = (0.01 * torch.randn(64, 8, generator=g)).requires_grad_()
    sigreg(z, 32, generator=torch.Generator().manual_seed(1)).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.no_grad():
        moved = z - 0.1 * z.grad / z.grad.norm()
    assert moved.std() > z.std()


def test_model_shapes_and_causality():
    cfg = JEPAConfig(image_size=16, action_dim=10, **{**TINY, "num_tokens": 4})
    torch.manual_seed(0)
    model = JEPA(cfg)
    pixels = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    z = model.encode_clips(pixels)
    assert z.shape == (2, 3, 4, 16)
    for block in model.predictor.blocks:  # adaLN-Zero starts as identity blocks: give them weights
        torch.nn.init.normal_(block.modulation.weight, std=0.1)
    actions = torch.randn(2, 2, 10)
    pred, no_proprio = model.predict(z[:, :2], actions)
    assert pred.shape == (2, 2, 4, 16) and no_proprio is None
    later = actions.clone()
    later[:, 1] += 1  # a later action cannot change an earlier prediction, but changes its own
    again, _ = model.predict(z[:, :2], later)
    assert torch.equal(again[:, 0], pred[:, 0]) and not torch.allclose(again[:, 1], pred[:, 1])
    with pytest.raises(ValueError, match="at most 2 frames"):
        model.predict(z, torch.randn(2, 3, 10))
    with pytest.raises(ValueError, match="perfect square"):
        JEPAConfig(num_tokens=2)


def test_patch_tokens_are_a_spatial_latent_that_saves_and_loads(tmp_path):
    cfg = JEPAConfig(image_size=16, action_dim=10, **{**TINY, "num_tokens": None, "tokens": "patches"})
    assert cfg.num_tokens == 16  # one per patch, derived
    torch.manual_seed(0)
    model = JEPA(cfg).eval()
    assert model.encoder.summary.numel() == 0 and model.encoder.pos.shape[1] == 16  # no summary tokens
    pixels = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    z = model.encode_clips(pixels)
    assert z.shape == (2, 3, 16, 16) and cfg.latent_shape == (16, 4, 4)
    pred, _ = model.predict(z[:, :2], torch.randn(2, 2, 10))
    assert pred.shape == (2, 2, 16, 16)
    save_jepa(model, tmp_path / "jepa", {})
    loaded, config = load_jepa(tmp_path / "jepa")
    assert config["model"]["tokens"] == "patches"
    torch.testing.assert_close(loaded.encode_clips(pixels), z)
    assert JEPAConfig(num_tokens=None).num_tokens == 1  # summary tokens: one (a CLS token) unless set
    with pytest.raises(ValueError, match=r"num_tokens must be 16 \(\(image_size 16 / patch_size 4\)\^2\) or null, got 4"):
        JEPAConfig(image_size=16, **{**TINY, "num_tokens": 4, "tokens": "patches"})
    with pytest.raises(ValueError, match="tokens must be 'summary' or 'patches'"):
        JEPAConfig(tokens="grid")


# -- training --------------------------------------------------------------------------------
def test_training_lowers_the_loss_and_saves_a_folder_that_loads_back(jepa_folder, wall_data):
    folder, metrics = jepa_folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not list(folder.parent.glob(".*"))  # no temp folder or resume point left behind
    config = json.loads((folder / "config.json").read_text())
    assert config["env"] == ENV and config["model"]["action_dim"] == 10 and config["model"]["image_size"] == 16
    model, _ = load_jepa(folder)
    cfg = model.cfg
    torch.manual_seed(0)  # train seed 0: the untrained model
    initial = JEPA(cfg)
    clips = ClipDataset(wall_data, cfg.history + 1, 5, "train", 0.3)
    batch = [clips[i] for i in range(0, len(clips), 4)]
    pixels = torch.from_numpy(np.stack([b["pixels"] for b in batch]))
    actions = torch.from_numpy(np.stack([b["actions"] for b in batch]))

    def loss(m):
        with torch.no_grad():
            return jepa_loss(m, pixels, actions, 1.0, 64, generator=torch.Generator().manual_seed(3))[1]

    before, after = loss(initial.eval()), loss(model)  # eval mode: BatchNorm's running statistics
    assert after["loss"] < 0.6 * before["loss"]
    # Near-identical 16 px frames start near collapse (SIGReg ~0.4 N); training spreads them out.
    assert before["sigreg"] > 0.35 * len(batch) and after["sigreg"] < 0.5 * before["sigreg"]
    assert 0.5 < metrics["scaling_factor"] < 3 and metrics["val_pred_mse"] >= 0 and np.isfinite(metrics["val_sigreg"])


def test_same_seed_same_weights_other_seed_other_weights(jepa_folder, wall_data, tmp_path):
    folder, _ = jepa_folder
    train_jepa(wall_data, tmp_path / "again", TINY, tiny_training(), ENV)
    assert_equal_weights(weights(folder), weights(tmp_path / "again"))
    train_jepa(wall_data, tmp_path / "workers", TINY, tiny_training(num_workers=2), ENV)  # batches loaded ahead
    assert_equal_weights(weights(folder), weights(tmp_path / "workers"))
    train_jepa(wall_data, tmp_path / "other", TINY, tiny_training(steps=2, seed=1), ENV)
    assert not torch.equal(weights(folder)["encoder.pos"], weights(tmp_path / "other")["encoder.pos"])


def test_save_and_load_are_bit_equal(tmp_path):
    torch.manual_seed(1)
    model = JEPA(JEPAConfig(image_size=16, **TINY))
    model.encode(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))  # BatchNorm running statistics move
    save_jepa(model.eval(), tmp_path / "m", {"scaling_factor": 1.0})
    loaded, config = load_jepa(tmp_path / "m")
    assert_equal_weights(model.state_dict(), loaded.state_dict())
    pixels = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(model.encode(pixels), loaded.encode(pixels)) and config["scaling_factor"] == 1.0


def test_interrupted_training_resumes_to_the_same_weights(wall_data, tmp_path, monkeypatch):
    cfg = tiny_training(steps=6, checkpoint_every=2)
    train_jepa(wall_data, tmp_path / "full", TINY, cfg, ENV)
    original = train_jepa_module._step

    def dies_at_step_5(model, opt, batch, num_clips, cfg, step, *args):
        if step == 5:
            raise KeyboardInterrupt("killed")
        return original(model, opt, batch, num_clips, cfg, step, *args)

    monkeypatch.setattr(train_jepa_module, "_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_jepa(wall_data, tmp_path / "resumed", TINY, cfg, ENV)
    resume = tmp_path / ".resumed.resume.pt"
    assert torch.load(resume, weights_only=True)["step"] == 4  # tensors and plain values: nothing to unpickle
    assert not (tmp_path / "resumed").exists()
    monkeypatch.undo()
    steps = []
    monkeypatch.setattr(train_jepa_module, "_step", lambda *a: steps.append(a[5]) or original(*a))
    train_jepa(wall_data, tmp_path / "resumed", TINY, cfg, ENV)
    assert steps == [5, 6] and not resume.exists()
    assert_equal_weights(weights(tmp_path / "full"), weights(tmp_path / "resumed"))


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 1}, "batch_size must be >= 2"),
    ({"lr": "abc"}, "train.lr must be a finite number"),
    ({"steps": 0}, "train.steps must be an int >= 1"),
    ({"num_workers": -1}, "train.num_workers must be an int >= 0"),
    ({"device": "gpu"}, "train.device must be auto, cpu, cuda"),
    ({"precision": "fp16"}, "precision must be one of"),
])
def test_bad_training_settings_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        tiny_training(**override)


def test_bad_training_inputs_are_named(wall_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset directory"):
        train_jepa(tmp_path / "nope", tmp_path / "out", TINY, tiny_training(), ENV)
    with pytest.raises(ValueError, match="collected on wmplan/Wall-v0, config says wmplan/PushT-v0"):
        train_jepa(wall_data, tmp_path / "out", TINY, tiny_training(), {**ENV, "id": "wmplan/PushT-v0"})
    with pytest.raises(ValueError, match="model.image_size=32 contradicts the dataset"):
        train_jepa(wall_data, tmp_path / "out", {**TINY, "image_size": 32}, tiny_training())
    with pytest.raises(ValueError, match="unknown JEPA model settings"):
        train_jepa(wall_data, tmp_path / "out", {**TINY, "depht": 2}, tiny_training())


def test_configs_match_their_dataclasses():
    cfg = compose_config("train_jepa", ["env=wall"])
    train = JEPATrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    assert train.sigreg_weight == 0.1 and train.sigreg_directions == 256 and train.sigreg_knots == 17
    model = OmegaConf.to_container(cfg.model, resolve=True)
    assert JEPAConfig(**{**model, "action_dim": 10}).latent_shape == (192, 1, 1)
    latent = compose_config("train", ["latent=jepa"]).latent
    codec_cfg = CodecConfig(**OmegaConf.to_container(latent, resolve=True))
    assert codec_cfg.name == "jepa" and codec_cfg.path == "outputs/jepa/wall" and codec_cfg.image_size == 64


@pytest.mark.parametrize("recipe", ["pusht", "pusht_gpu"])
def test_recipes_build_the_pusht_model_with_its_probe(recipe):
    from wmplan.train_jepa import _complete_model_config, _pose_env

    cfg = compose_config("train_jepa", [f"jepa_recipe={recipe}"])
    train = JEPATrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    info = {"resolution": cfg.env.resolution, "action_dim": 2, "proprio_dim": 4, "env_id": cfg.env.id, "state_dim": 10}
    model = _complete_model_config(OmegaConf.to_container(cfg.model, resolve=True), info, cfg.env.frameskip,
                                   _pose_env(info)[1])
    assert cfg.env.name == "pusht" and model.proprio_dim == 4 and model.probe_dim == 6 and model.action_dim == 10
    assert (train.steps, model.patch_size) == ((12000, 16) if recipe == "pusht" else (100000, 8))


@pytest.mark.parametrize("recipe", ["granular", "rope"])
def test_layout_recipes_build_a_layout_probe_for_their_env(recipe):
    from wmplan.train_jepa import _complete_model_config, _pose_env

    from wmplan.envs import make

    cfg = compose_config("train_jepa", [f"jepa_recipe={recipe}"])
    info = {"resolution": cfg.env.resolution, "action_dim": 4, "proprio_dim": 2, "env_id": cfg.env.id,
            "state_dim": len(make(cfg.env.id).unwrapped.get_state())}
    model = _complete_model_config(OmegaConf.to_container(cfg.model, resolve=True), info, cfg.env.frameskip,
                                   _pose_env(info)[1])
    assert cfg.env.name == recipe and model.probe_dim == 512 and model.history == 1 and model.patch_size == 16


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    from wmplan.train_jepa import main

    monkeypatch.setattr(sys, "argv", ["wmplan-train-jepa", f"dataset={tmp_path / 'nope'}", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert f"wmplan-train-jepa: error: no dataset directory at {tmp_path / 'nope'}" in capsys.readouterr().err


# -- the codec ---------------------------------------------------------------------------------
def test_codec_encodes_scaled_embeddings_and_rebuilds_from_its_architecture(jepa_folder, wall_data, tmp_path):
    folder, metrics = jepa_folder
    codec = build_codec(CodecConfig(name="jepa", path=str(folder), image_size=RESOLUTION))
    assert codec.latent_shape == (16, 1, 1) and not codec.can_decode
    frames = torch.from_numpy(np.stack([ClipDataset(wall_data, 4, 5, "train", 0.3)[i]["pixels"] for i in range(0, 30, 4)]))
    latents = codec.encode(frames)  # [8, 4, 16, 1, 1]
    assert latents.shape == (8, 4, 16, 1, 1)
    model, _ = load_jepa(folder)
    raw = model.encode(frames.flatten(0, 1).permute(0, 3, 1, 2))  # [32, 1, 16]
    torch.testing.assert_close(latents.flatten(0, 1)[:, :, 0, 0], raw[:, 0] * metrics["scaling_factor"])
    assert 0.5 < latents.std().item() < 2.0  # unit variance, up to the sample
    architecture = codec.architecture()
    assert json.loads(json.dumps(architecture)) == architecture
    rebuilt = build_codec(CodecConfig(name="jepa", path=str(tmp_path / "gone"), image_size=RESOLUTION), architecture)
    rebuilt.load_state_dict(codec.state_dict())
    assert torch.equal(rebuilt.encode(frames), latents) and rebuilt.fingerprint() == codec.fingerprint()
    with pytest.raises(ValueError, match="trained at 16 px, but image_size is 32"):
        build_codec(CodecConfig(name="jepa", path=str(folder), image_size=32))


def test_bad_codec_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"codec 'jepa': JEPA folder {tmp_path / 'nope'} does not exist"):
        build_codec(CodecConfig(name="jepa", path=str(tmp_path / "nope"), image_size=RESOLUTION))
    with pytest.raises(ValueError, match="codec 'jepa' needs `path`"):
        build_codec(CodecConfig(name="jepa", image_size=RESOLUTION))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ValueError, match="is not a wmplan JEPA folder"):
        build_codec(CodecConfig(name="jepa", path=str(tmp_path / "foreign"), image_size=RESOLUTION))
    torch.manual_seed(0)
    save_jepa(JEPA(JEPAConfig(image_size=16, **TINY)), tmp_path / "m", {"scaling_factor": 1.0})
    (tmp_path / "m" / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="cannot read"):
        build_codec(CodecConfig(name="jepa", path=str(tmp_path / "m"), image_size=RESOLUTION))


def test_nanowm_trains_on_jepa_latents(jepa_folder, wall_data, tmp_path):
    folder, _ = jepa_folder
    overrides = [o for o in TRAIN_OVERRIDES if not o.startswith("latent")]
    cfg = compose_config("train", [*overrides, "latent=jepa", f"latent.path={folder}", "model.patch_size=1",
                                   f"data.path={wall_data}", f"out_dir={tmp_path / 'wm'}", "training.max_steps=2"])
    ckpt = torch.load(wmplan.train.train(cfg), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    model_cfg = ckpt["wmplan_config"]["model"]
    assert (model_cfg["latent_channels"], model_cfg["latent_size"], model_cfg["patch_size"]) == (16, 1, 1)
    assert ckpt["codec_architecture"]["model"]["embed_dim"] == 16
    state = ckpt["state_dict"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())
    # The NanoWM forward itself on [B, T, 16, 1, 1] latents: one token per frame (+ proprio).
    net = NanoWM(NanoWMConfig(**model_cfg))
    net.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    out, proprio = net(torch.randn(2, 3, 16, 1, 1), torch.full((2, 3), 500.0), torch.zeros(2, 3, 10),
                       torch.zeros(2, 3, model_cfg["proprio_dim"]))
    assert out.shape == (2, 3, 16, 1, 1) and proprio.shape == (2, 3, model_cfg["proprio_dim"])


# -- planning with the predictor -----------------------------------------------------------------
def test_predictor_rollouts_batch_candidates_independently(jepa_folder, wall_data):
    folder, _ = jepa_folder
    wm = JEPAWorldModel.from_folder(f"jepa:{folder}", precision="fp32")
    clip = ClipDataset(wall_data, 4, 5, "val", 0.3)[0]
    obs = {"pixels": torch.from_numpy(clip["pixels"][:2])}
    enc = wm.encode(obs)
    assert enc["latents"].shape == (2, 16, 1, 1) and enc["proprio"] is None
    context = {"latents": enc["latents"].view(1, 2, 16, 1, 1), "actions": torch.from_numpy(clip["actions"][:1])[None]}
    rollout = wm.make_rollout_fn(context)
    actions = torch.rand(1, 5, 3, 10, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pred = rollout(actions)["latents"]
    assert pred.shape == (1, 5, 3, 16, 1, 1)
    torch.testing.assert_close(rollout(actions[:, 2:3])["latents"][:, 0], pred[:, 2])  # alone == batched
    assert not torch.allclose(pred[:, 0], pred[:, 1])  # actions matter
    # Step one equals the predictor on the context, with the candidate's first action.
    z = enc["latents"][:, :, 0, 0].view(1, 2, 1, 16)
    first = wm.model.predict(z, torch.cat([context["actions"], actions[:, 0, :1]], dim=1))[0][:, -1]  # [1, 1, 16]
    torch.testing.assert_close(pred[0, 0, 0, :, 0, 0], first[0, 0])
    with pytest.raises(ValueError, match="NaN or inf"):
        rollout(torch.full((1, 1, 1, 10), float("nan")))
    # WorldModel.rollout's contract (for the diagnostics): the same prediction; clips encode frame by frame.
    torch.testing.assert_close(wm.rollout(context, actions, sampler=None, seed=3)["latents"], pred)
    single = {"latents": enc["latents"][1:], "actions": None}  # one context frame, no actions between
    torch.testing.assert_close(wm.rollout(single, actions)["latents"],
                               wm.make_rollout_fn({"latents": enc["latents"][None, 1:], "actions": torch.zeros(1, 0, 10)})(actions)["latents"])
    torch.testing.assert_close(wm.encode({"pixels": obs["pixels"][None]})["latents"][0], enc["latents"])


def test_predictor_plans_through_wmplan_plan(jepa_folder, tmp_path):
    folder, _ = jepa_folder
    results = evaluate(plan_config(f"jepa:{folder}", tmp_path, "objective=dino_wm_maze"))
    assert results["episodes"] == len(results["records"]) == EPISODES
    assert json.loads((tmp_path / "results.json").read_text())["checkpoint"]["sha256"] == results["checkpoint"]["sha256"]
    assert len(results["checkpoint"]["sha256"]) == 64 and results["provenance"]["precision"] in ("bf16", "fp32")
    assert all(np.abs(np.asarray(r["actions"])).max() <= 1 for r in results["records"])
    again = evaluate(plan_config(f"jepa:{folder}", tmp_path / "again", "objective=dino_wm_maze"))
    assert [r["actions"] for r in again["records"]] == [r["actions"] for r in results["records"]]  # deterministic


def test_planning_in_data_units_reads_the_recorded_action_std(jepa_folder, wall_data, tmp_path):
    folder, _ = jepa_folder
    recorded = json.loads((folder / "config.json").read_text())["action_stats"]
    train = ClipDataset(wall_data, 2, 5, "train", val_fraction=0.3, seed=0)
    for got, expected in zip((recorded["mean"], recorded["std"]), train.action_stats()):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(JEPAWorldModel.from_folder(folder).action_std, np.float32(recorded["std"]))
    runs = {units: evaluate(plan_config(f"jepa:{folder}", tmp_path / units, "objective=dino_wm_maze", "videos=0",
                                        f"sigma_units={units}", "planner.var_scale=0.3")) for units in ("action", "data")}
    assert runs["data"]["config"]["sigma_units"] == "data"
    assert [r["actions"] for r in runs["data"]["records"]] != [r["actions"] for r in runs["action"]["records"]]
    old = tmp_path / "old_folder"  # a folder from before the statistics were recorded
    shutil.copytree(folder, old)
    config = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "action_stats"}))
    with pytest.raises(ValueError, match="does not record its training actions' std"):
        evaluate(plan_config(f"jepa:{old}", tmp_path / "old", "objective=dino_wm_maze", "sigma_units=data"))
    for overrides, message in ((["world_model=oracle"], "world_model=oracle has none"),
                               (["sigma_units=std"], "sigma_units must be 'action' or 'data'")):
        with pytest.raises(ValueError, match=message):
            evaluate(plan_config(f"jepa:{folder}", tmp_path / "bad", "objective=dino_wm_maze", "sigma_units=data",
                                 *overrides))
    cfg = plan_config(f"jepa:{folder}", tmp_path / "bad", "sigma_units=data")
    with pytest.raises(ValueError, match="the GradientPlanner planner has none"):
        scale_sigma(cfg, build_planner({"name": "gradient"}), JEPAWorldModel.from_folder(folder))


@pytest.mark.parametrize("overrides, error, message", [
    (["env=pusht", "objective=dino_wm_maze"], ValueError,
     "trained with env id wmplan/Wall-v0, but the planning env has wmplan/PushT-v0"),
    (["env.resolution=32", "objective=dino_wm_maze"], ValueError, "trained with resolution 16, but the planning env has 32"),
    ([], ValueError, r"predicts no proprio \(trained with model.proprio_dim=0\): set objective.proprio_weight=0"),
])
def test_bad_plans_are_refused(jepa_folder, tmp_path, overrides, error, message):
    folder, _ = jepa_folder
    with pytest.raises(error, match=message):
        evaluate(plan_config(f"jepa:{folder}", tmp_path, *overrides))
    assert not (tmp_path / "results.json").exists()


def test_missing_jepa_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"JEPA folder {tmp_path / 'nope'} does not exist"):
        evaluate(plan_config(f"jepa:{tmp_path / 'nope'}", tmp_path, "objective=dino_wm_maze"))


# -- proprio (DINO-WM's predictor input) ---------------------------------------------------------
@pytest.fixture(scope="module")
def proprio_jepa_folder(wall_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("jepa_proprio") / "wall"
    metrics = train_jepa(wall_data, out, {**TINY, "proprio_dim": None}, tiny_training(steps=60), ENV)
    return out, metrics


def test_proprio_jepa_learns_the_proprio_and_stores_its_normalisation(proprio_jepa_folder, wall_data):
    folder, metrics = proprio_jepa_folder
    model, config = load_jepa(folder)
    assert config["model"]["proprio_dim"] == 2  # null: the dataset's proprio width
    mean, std = ClipDataset(wall_data, 3, 5, "train", 0.3).proprio_stats()
    torch.testing.assert_close(model.proprio_mean, torch.from_numpy(mean))
    torch.testing.assert_close(model.proprio_std, torch.from_numpy(std))
    assert {"proprio_mean", "proprio_std"} <= set(weights(folder))
    assert metrics["final_train"]["proprio"] < 1.0  # from ~1 + the untrained head's error
    assert metrics["val_proprio_mse"] < 1.0 and metrics["val_proprio_copy_last_mse"] > 0
    # A pixels-only JEPA saves no proprio buffers, so folders from before the option still load.
    assert not {"proprio_mean", "proprio_std"} & set(JEPA(JEPAConfig(**TINY)).state_dict())


def test_folders_from_before_the_proprio_option_load_as_pixels_only(jepa_folder, tmp_path):
    folder, _ = jepa_folder
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    config = json.loads((folder / "config.json").read_text())
    del config["model"]["proprio_dim"]  # written before the option existed
    (old / "config.json").write_text(json.dumps(config))
    model, _ = load_jepa(old)
    assert model.cfg.proprio_dim == 0 and not JEPAWorldModel(model, config).uses_proprio
    with pytest.raises(ValueError, match="pass the clips' proprio"):
        jepa_loss(JEPA(JEPAConfig(image_size=16, action_dim=10, **{**TINY, "proprio_dim": 2})),
                  torch.zeros(2, 3, 16, 16, 3, dtype=torch.uint8), torch.zeros(2, 2, 10), 0.1)


def two_frame_rollout(wm: JEPAWorldModel, data):
    """(clip, its first two frames encoded, that context, 4 random 3-step candidates, their rollout)."""
    clip = ClipDataset(data, 4, 5, "val", 0.3)[0]
    enc = wm.encode({"pixels": clip["pixels"][:2], "proprio": clip["proprio"][:2]})
    context = {"latents": enc["latents"][None], "proprio": enc["proprio"][None],
               "actions": torch.from_numpy(clip["actions"][:1])[None]}
    actions = torch.rand(1, 4, 3, 10, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return clip, enc, context, actions, wm.make_rollout_fn(context)(actions)


def test_proprio_rollouts_carry_the_predicted_proprio(proprio_jepa_folder, wall_data):
    folder, _ = proprio_jepa_folder
    wm = JEPAWorldModel.from_folder(folder, precision="fp32")
    assert wm.uses_proprio
    clip, enc, context, actions, pred = two_frame_rollout(wm, wall_data)
    torch.testing.assert_close(enc["proprio"], wm.model.normalize_proprio(torch.from_numpy(clip["proprio"][:2])))
    assert pred["latents"].shape == (1, 4, 3, 16, 1, 1) and pred["proprio"].shape == (1, 4, 3, 2)
    # Step one is the predictor on the context with the candidate's first action; the proprio
    # it predicts is fed back, so it changes the second step.
    z = enc["latents"][:, :, 0, 0].view(1, 2, 1, 16)
    _, first = wm.model.predict(z, torch.cat([context["actions"], actions[:, 0, :1]], dim=1), enc["proprio"][None])
    torch.testing.assert_close(pred["proprio"][0, 0, 0], first[0, -1])
    torch.testing.assert_close(wm.rollout(context, actions)["proprio"], pred["proprio"])
    with pytest.raises(ValueError, match="obs needs 'proprio'"):
        wm.encode({"pixels": clip["pixels"][:2]})
    with pytest.raises(ValueError, match="context proprio must be"):
        wm.make_rollout_fn({**context, "proprio": None})


def test_proprio_jepa_plans_with_the_proprio_term(proprio_jepa_folder, tmp_path):
    folder, _ = proprio_jepa_folder
    results = evaluate(plan_config(f"jepa:{folder}", tmp_path, "objective=dino_wm_default"))
    assert results["config"]["objective"]["proprio_weight"] == 1.0
    assert results["episodes"] == len(results["records"]) == EPISODES


def test_proprio_dim_must_match_the_dataset(wall_data, tmp_path):
    with pytest.raises(ValueError, match="model.proprio_dim=3 contradicts the dataset, which needs 2"):
        train_jepa(wall_data, tmp_path / "m", {**TINY, "proprio_dim": 3}, tiny_training(steps=1), ENV)
    with pytest.raises(ValueError, match="proprio_dim must be an int >= 0"):
        JEPAConfig(proprio_dim=-1)


# -- pose probe (PushT) -----------------------------------------------------------------------------
PUSHT = {"id": "wmplan/PushT-v0", "frameskip": 5, "resolution": RESOLUTION}


@pytest.fixture(scope="module")
def pusht_data(tmp_path_factory):
    """Six `expert` PushT episodes of 20 steps at 16 px."""
    from wmplan.data.collect import collect
    from wmplan.envs.config import load_env_config

    env_cfg = load_env_config("pusht", resolution=RESOLUTION, episode_length=20)
    return collect(env_cfg, 6, "expert", 0, tmp_path_factory.mktemp("data") / "pusht", progress=False)


def test_posed_clips_pickle_for_spawned_loader_workers(pusht_data):
    """macOS and Windows start DataLoader workers by pickling the dataset (train.num_workers)."""
    import pickle

    from wmplan.train_jepa import PosedClips, _pose_env

    env, width = _pose_env({"env_id": PUSHT["id"], "state_dim": 10})
    clips = PosedClips(ClipDataset(pusht_data, 4, 5, "train", val_fraction=0.3), env)
    copy = pickle.loads(pickle.dumps(clips))
    original, restored = clips[3], copy[3]
    assert original["pose"].shape == (4, width)
    for key in ("pixels", "actions", "pose"):
        np.testing.assert_array_equal(original[key], restored[key])


@pytest.fixture(scope="module")
def probe_jepa_folder(pusht_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("jepa_probe") / "pusht"
    metrics = train_jepa(pusht_data, out, {**TINY, "proprio_dim": None, "probe_dim": None},
                         tiny_training(steps=60), PUSHT)
    return out, metrics


def test_pose_probe_learns_the_pose_and_stores_its_normalisation(probe_jepa_folder, pusht_data):
    from wmplan.envs.pusht import PushTEnv

    folder, metrics = probe_jepa_folder
    model, config = load_jepa(folder)
    assert config["model"]["probe_dim"] == 6  # null: the env's pose features (agent xy, block xy, cos, sin)
    pose = PushTEnv().pose_features(ClipDataset(pusht_data, 3, 5, "train", 0.3).train_frames("states"))
    torch.testing.assert_close(model.pose_mean, torch.from_numpy(pose.mean(0)).float())
    torch.testing.assert_close(model.pose_std, torch.from_numpy(pose.std(0)).float())
    assert {"pose_mean", "pose_std", "probe.0.weight"} <= set(weights(folder))
    assert len(metrics["val_probe_rmse"]) == len(metrics["val_probe_predicted_rmse"]) == 6
    # Trained, the probe reads the pose better than the same weights before training (seed 0).
    clips = ClipDataset(pusht_data, 3, 5, "train", 0.3)
    batch = [clips[i] for i in range(0, len(clips), 3)]
    pixels = torch.from_numpy(np.stack([c["pixels"] for c in batch]))
    target = torch.from_numpy(np.stack([PushTEnv().pose_features(c["states"]) for c in batch]))
    torch.manual_seed(0)
    untrained = JEPA(model.cfg).eval()
    untrained.pose_mean.copy_(model.pose_mean)
    untrained.pose_std.copy_(model.pose_std)
    with torch.no_grad():
        errors = [F.mse_loss(m.probe_pose(m.encode_clips(pixels)), m.normalize_pose(target)).item()
                  for m in (model, untrained)]
    assert errors[0] < 0.7 * errors[1]
    with pytest.raises(ValueError, match="pass the clips' pose features"):
        jepa_loss(model.train(), pixels, torch.zeros(len(batch), 2, 10), 0.1,
                  proprio=torch.from_numpy(np.stack([c["proprio"] for c in batch])))


def test_probe_rollouts_read_the_pose_of_each_predicted_embedding(probe_jepa_folder, pusht_data):
    folder, _ = probe_jepa_folder
    wm = JEPAWorldModel.from_folder(folder, precision="fp32")
    assert wm.has_pose_probe
    clip, enc, context, actions, pred = two_frame_rollout(wm, pusht_data)
    assert enc["pose"].shape == (2, 6)
    assert pred["pose"].shape == (1, 4, 3, 6)
    tokens = pred["latents"].flatten(-3).unsqueeze(-2)  # [1, 4, 3, K=1, D]
    torch.testing.assert_close(pred["pose"], wm.model.read_pose(tokens))
    # With the env's pose_from_proprio the agent's xy comes from the observed / predicted proprio.
    from wmplan.envs.pusht import PushTEnv

    hooked = JEPAWorldModel.from_folder(folder, precision="fp32", pose_from_proprio=PushTEnv().pose_from_proprio)
    enc_h = hooked.encode({"pixels": clip["pixels"][:2], "proprio": clip["proprio"][:2]})
    torch.testing.assert_close(enc_h["pose"][:, :2], torch.from_numpy(clip["proprio"][:2, :2]))
    torch.testing.assert_close(enc_h["pose"][:, 2:], enc["pose"][:, 2:])
    pred_h = hooked.make_rollout_fn(context)(actions)
    raw_proprio = pred_h["proprio"] * hooked.model.proprio_std + hooked.model.proprio_mean
    torch.testing.assert_close(pred_h["pose"][..., :2], raw_proprio[..., :2])
    torch.testing.assert_close(pred_h["pose"][..., 2:], pred["pose"][..., 2:])


def test_probe_jepa_plans_with_the_pose_cost_and_others_are_refused(probe_jepa_folder, jepa_folder, checkpoint, tmp_path):
    folder, _ = probe_jepa_folder
    results = evaluate(plan_config(f"jepa:{folder}", tmp_path, "env=pusht", "objective=pose_probe"))
    assert results["config"]["objective"]["pose_weight"] == 1.0
    assert results["episodes"] == len(results["records"]) == EPISODES
    with pytest.raises(ValueError, match=r"has no pose probe \(trained with model.probe_dim=0\)"):
        evaluate(plan_config(f"jepa:{jepa_folder[0]}", tmp_path / "pixels", "objective=pose_probe"))
    with pytest.raises(ValueError, match="has no pose probe: objective.pose_weight needs a JEPA"):
        evaluate(plan_config(str(checkpoint), tmp_path / "nanowm", "objective=pose_probe"))


def test_an_ensemble_joins_its_members_and_averages_their_pose_costs(probe_jepa_folder, jepa_folder, pusht_data,
                                                                      tmp_path):
    """world_model=jepa:A+B: each member rolls every candidate out from its own slice of the
    context; latents and proprio are concatenated, the pose cost is the mean of the members'."""
    from wmplan.envs.pusht import PushTEnv
    from wmplan.jepa_world_model import JEPAEnsemble, load_jepa_world_model
    from wmplan.planners.objectives import PoseCost

    folder, _ = probe_jepa_folder
    model, config = load_jepa(folder)  # a second member: the same architecture, other weights
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    other = tmp_path / "other"
    save_jepa(model, other, {k: v for k, v in config.items() if k not in ("format", "model")})
    ensemble = load_jepa_world_model(f"jepa:{folder}+{other}", precision="fp32")
    members = [JEPAWorldModel.from_folder(f, precision="fp32") for f in (folder, other)]
    assert isinstance(ensemble, JEPAEnsemble) and ensemble.uses_proprio and ensemble.has_pose_probe
    _, enc, _, actions, pred = two_frame_rollout(ensemble, pusht_data)
    alone = [two_frame_rollout(member, pusht_data) for member in members]

    def flat(outputs: list[dict]) -> torch.Tensor:  # members' latents, flattened and concatenated
        return torch.cat([o["latents"].flatten(-3) for o in outputs], dim=-1)[..., None, None]

    torch.testing.assert_close(enc["latents"], flat([a[1] for a in alone]))
    torch.testing.assert_close(pred["latents"], flat([a[4] for a in alone]))
    torch.testing.assert_close(pred["proprio"], torch.cat([a[4]["proprio"] for a in alone], dim=-1))
    assert not torch.allclose(alone[0][4]["pose"], alone[1][4]["pose"])  # the members disagree
    torch.testing.assert_close(pred["pose"], (alone[0][4]["pose"] + alone[1][4]["pose"]) / 2)
    clip = ClipDataset(pusht_data, 4, 5, "val", 0.3)[0]
    goal_obs = {"pixels": clip["pixels"][3:], "proprio": clip["proprio"][3:]}
    cost = PoseCost(PushTEnv().pose_cost)
    member_costs = [cost(a[4], m.encode(goal_obs), actions) for a, m in zip(alone, members)]
    torch.testing.assert_close(cost(pred, ensemble.encode(goal_obs), actions), (member_costs[0] + member_costs[1]) / 2)
    results = evaluate(plan_config(f"jepa:{folder}+{other}", tmp_path / "plan", "env=pusht", "objective=pose_probe"))
    assert results["checkpoint"]["sha256"] == "+".join(m.checkpoint_hash for m in members)
    assert f"pusht {folder.name}+{other.name}:" in results["summary"]
    with pytest.raises(ValueError, match="names an empty folder: separate ensemble members with one '\\+'"):
        load_jepa_world_model(f"jepa:{folder}++{other}")
    with pytest.raises(ValueError, match="ensemble member 1 has env_id=wmplan/Wall-v0, member 0 has wmplan/PushT-v0"):
        load_jepa_world_model(f"jepa:{folder}+{jepa_folder[0]}")
    # A member with another token layout (4 tokens: latents [16, 2, 2]) joins as a flat vector.
    four_tokens = JEPA(dataclasses.replace(model.cfg, num_tokens=4))
    save_jepa(four_tokens, tmp_path / "four", {k: v for k, v in config.items() if k not in ("format", "model")})
    mixed = load_jepa_world_model(f"jepa:{folder}+{tmp_path / 'four'}", precision="fp32")
    _, enc, _, actions, pred = two_frame_rollout(mixed, pusht_data)
    parts = [two_frame_rollout(member, pusht_data) for member in mixed.members]
    assert parts[1][4]["latents"].shape[-3:] == (16, 2, 2) and enc["latents"].shape == (2, 16 + 64, 1, 1)
    torch.testing.assert_close(pred["latents"], flat([p[4] for p in parts]))
    torch.testing.assert_close(pred["pose"], (parts[0][4]["pose"] + parts[1][4]["pose"]) / 2)


def test_a_pose_probe_needs_an_env_with_pose_features(wall_data, tmp_path):
    with pytest.raises(ValueError, match="model.probe_dim: WallEnv defines no pose features"):
        train_jepa(wall_data, tmp_path / "m", {**TINY, "probe_dim": None}, tiny_training(steps=1), ENV)
    with pytest.raises(ValueError, match="probe_dim must be an int >= 0"):
        JEPAConfig(probe_dim=-2)


def test_max_train_episodes_trains_on_fewer_episodes_and_keeps_the_val_split(jepa_folder, wall_data, tmp_path):
    _, full = jepa_folder
    metrics = train_jepa(wall_data, tmp_path / "m", TINY, tiny_training(steps=1, max_train_episodes=2), ENV)
    per_episode = full["train_clips"] / 5  # 6 episodes, 1 in val (val_fraction 0.3), all of equal length
    assert metrics["train_clips"] == 2 * per_episode and metrics["val_clips"] == full["val_clips"]
    with pytest.raises(ValueError, match="has 5 train episodes, fewer than max_train_episodes=6"):
        train_jepa(wall_data, tmp_path / "n", TINY, tiny_training(steps=1, max_train_episodes=6), ENV)


def test_granular_layout_probe_trains_and_plans(tmp_path):
    """Granular's pose probe reads the grains' layout grid (GranularEnv.pose_features): 512
    features, summarised as one held-out RMSE, and objective=pose_probe plans with its grid
    Chamfer cost (the jepa_recipe=granular path, at toy size)."""
    from wmplan.data.collect import collect
    from wmplan.envs.config import load_env_config
    from wmplan.envs.deformable import GranularEnv

    env_cfg = load_env_config("granular", resolution=RESOLUTION, episode_length=6)
    data = collect(env_cfg, 4, "random", 0, tmp_path / "granular", progress=False)
    folder = tmp_path / "jepa"
    env = {"id": "wmplan/Granular-v0", "frameskip": 1, "resolution": RESOLUTION}
    metrics = train_jepa(data, folder, {**TINY, "history": 1, "proprio_dim": None, "probe_dim": None},
                         tiny_training(steps=4, val_clips=4, scale_clips=4), env)
    model, config = load_jepa(folder)
    assert config["model"]["probe_dim"] == 512
    # One scale per grid (GranularEnv.pose_groups): the RMS of its cells' stds.
    pose = GranularEnv().pose_features(ClipDataset(data, 2, 1, "train", 0.3).train_frames("states"))
    for grid in (slice(0, 256), slice(256, 512)):
        expected = np.sqrt((pose[:, grid].std(0) ** 2).mean())
        torch.testing.assert_close(model.pose_std[grid], torch.full((256,), expected, dtype=torch.float32))
    # One RMSE per grid (occupancy, distance field), not one per cell.
    assert len(metrics["val_probe_rmse"]) == len(metrics["val_probe_predicted_rmse"]) == 2
    results = evaluate(plan_config(f"jepa:{folder}", tmp_path / "plan", "env=granular", "objective=pose_probe",
                                   "budget_env_steps=2", "horizon=2", "videos=0"))
    assert results["config"]["objective"]["pose_weight"] == 1.0
    assert all(np.isfinite(r["final_distance"]) for r in results["records"])


def test_pose_std_pools_groups_and_names_a_mismatch():
    from wmplan.train_jepa import pose_std

    pose = np.array([[0.0, 0.0, 5.0, 1.0], [2.0, 6.0, 5.0, 3.0]])  # stds 1, 3, 0, 1
    np.testing.assert_allclose(pose_std(pose, None), [1, 3, 1, 1])  # a constant feature stays unscaled
    np.testing.assert_allclose(pose_std(pose, (2, 2)), [np.sqrt(5), np.sqrt(5), np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)
    with pytest.raises(ValueError, match=r"pose_groups \(2, 1\) do not cover the 4 pose features"):
        pose_std(pose, (2, 1))
