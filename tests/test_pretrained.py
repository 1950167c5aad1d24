"""Shipped pretrained world models: small, safe, loadable by name, planning, and not stale."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from wmplan.checkpoint import PRETRAINED_DIR, export_pretrained, read_checkpoint, resolve_path
from wmplan.planners.evaluate import evaluate
from wmplan.rollout import WorldModel

SHIPPED = sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))
DATA_SIZES = ("latent_channels", "latent_size", "action_dim", "proprio_dim")  # set by wmplan-train from the data
PROTOCOL = ("env", "planner", "objective", "sampler", "horizon", "execute_k", "budget_env_steps", "budget_horizon",
            "history", "seed", "goals")


def test_the_readme_models_ship_within_25_mb():
    assert {"wall", "umaze"} <= set(SHIPPED)
    assert sum((PRETRAINED_DIR / f"{name}.safetensors").stat().st_size for name in SHIPPED) <= 25 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_pretrained_recipe_still_composes_to_the_shipped_model(name):
    """Stale check: the recorded recipe, composed with today's configs, must give the file's
    model and planning protocol. Regenerate with scripts/make_pretrained.py when it fails."""
    ckpt = read_checkpoint(f"pretrained:{name}")
    trained = ckpt["wmplan_config"]
    train = OmegaConf.to_container(compose_config("train", ckpt["recipe"]["train"]), resolve=True)
    hint = f"pretrained:{name} is stale; rerun scripts/make_pretrained.py --name {name}"
    for group in ("model", "diffusion"):
        for key, value in train[group].items():
            if key not in DATA_SIZES:
                assert trained[group][key] == value, f"{hint} ({group}.{key}: {trained[group][key]} vs {value})"
    assert {k: v for k, v in trained["latent"].items() if k != "path"} == \
        {k: v for k, v in train["latent"].items() if k != "path"}, hint
    results = json.loads((PRETRAINED_DIR / f"{name}.results.json").read_text())
    plan = OmegaConf.to_container(compose_config("plan", [*ckpt["recipe"]["plan"], f"world_model=pretrained:{name}"]),
                                  resolve=True)
    for key in PROTOCOL:
        assert results["config"][key] == plan[key], f"{hint} ({key}: {results['config'][key]} vs {plan[key]})"
    assert results["episodes"] == 50 and results["checkpoint"]["path"] == f"pretrained:{name}"


@pytest.mark.parametrize("name", SHIPPED)
def test_pretrained_model_plans_one_episode_by_name(name, tmp_path):
    recipe = read_checkpoint(f"pretrained:{name}")["recipe"]
    cfg = compose_config("plan", [*recipe["plan"], f"world_model=pretrained:{name}", "episodes=1", "videos=0",
                                  f"out_dir={tmp_path}", "progress=false"])
    results = evaluate(cfg)
    assert results["episodes"] == 1 and results["replans"] >= 1


def test_unknown_pretrained_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"no pretrained world model 'nope'; shipped: \[.*'wall'"):
        resolve_path("pretrained:nope")


def test_export_keeps_the_ema_model_exactly_up_to_fp16(checkpoint, tmp_path):
    out = export_pretrained(checkpoint, tmp_path / "m.safetensors", recipe={"train": [], "plan": []})
    assert out.stat().st_size < checkpoint.stat().st_size / 2  # no optimizer, no raw weights, fp16
    shipped, full = WorldModel.from_checkpoint(out), WorldModel.from_checkpoint(checkpoint)
    for (key, a), b in zip(shipped.model.state_dict().items(), full.model.state_dict().values()):
        stored = b.half().float() if b.numel() > 64 else b  # small tensors are kept exact
        torch.testing.assert_close(a, stored, rtol=0, atol=0, msg=key)
    assert torch.equal(shipped.module.proprio_std, full.module.proprio_std)  # buffers stay exact
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(out.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or not a safetensors file"):
        WorldModel.from_checkpoint(bad)
