"""WorldModel (wmplan.rollout): loading, encode / rollout / decode shapes, determinism,
chunking invariance, differentiability and input checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wmplan.envs import make
from wmplan.rollout import WorldModel, file_hash

B, S, AW = 2, 3, 10  # Wall: 2-D actions, frameskip 5


@pytest.fixture(scope="module")
def wm(checkpoint) -> WorldModel:
    return WorldModel.from_checkpoint(checkpoint, precision="fp32")  # exact semantics; bf16 tested below


@pytest.fixture(scope="module")
def obs(checkpoint) -> dict[str, np.ndarray]:
    """Real Wall observations: pixels uint8 [B, 16, 16, 3], proprio [B, P]."""
    env = make("wmplan/Wall-v0", frameskip=5, resolution=16)
    frames = [env.reset(seed=i)[0] for i in range(B)]
    env.close()
    return {key: np.stack([f[key] for f in frames]) for key in ("pixels", "proprio")}


def actions(h: int, seed: int = 0, s: int = S) -> torch.Tensor:
    return torch.rand(B, s, h, AW, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_from_checkpoint(wm, checkpoint):
    assert wm.env_id == "wmplan/Wall-v0"
    assert (wm.action_dim, wm.frameskip, wm.window) == (AW, 5, 3)
    assert wm.uses_proprio
    assert wm.checkpoint_hash == file_hash(checkpoint) and len(wm.checkpoint_hash) == 64
    # Weights are the trained ones (EMA by default), not a fresh initialisation.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(wm.model.patch_embed.weight, state["ema.module.patch_embed.weight"], rtol=0, atol=0)
    raw = WorldModel.from_checkpoint(checkpoint, use_ema=False)
    torch.testing.assert_close(raw.model.patch_embed.weight, state["model.patch_embed.weight"], rtol=0, atol=0)
    # The planning default sampler: few steps, all frames together.
    assert wm.sampler.schedule == "full_sequence" and wm.sampler.steps == 1 and wm.sampler.context_cache


def test_encode_shapes(wm, obs):
    enc = wm.encode(obs)
    assert enc["latents"].shape == (B, 3, 8, 8) and enc["latents"].dtype == torch.float32
    assert enc["proprio"].shape == (B, obs["proprio"].shape[-1])
    assert enc["latents"].min() >= -1 and enc["latents"].max() <= 1  # pixel latents in [-1, 1]
    seq = wm.encode({"pixels": np.stack([obs["pixels"]] * 2, 1), "proprio": np.stack([obs["proprio"]] * 2, 1)})
    assert seq["latents"].shape == (B, 2, 3, 8, 8) and seq["proprio"].shape == (B, 2, obs["proprio"].shape[-1])
    torch.testing.assert_close(seq["latents"][:, 1], enc["latents"])
    torch.testing.assert_close(seq["proprio"][:, 0], enc["proprio"])
    with pytest.raises(ValueError, match="proprio"):
        wm.encode({"pixels": obs["pixels"]})


@pytest.mark.parametrize("horizon", [2, 5])  # 5 > window - 1 = 2: the window slides
def test_rollout_shapes_and_determinism(wm, obs, horizon):
    ctx = wm.encode(obs)
    acts = actions(horizon)
    pred = wm.rollout(ctx, acts, seed=3)
    assert pred["latents"].shape == (B, S, horizon, 3, 8, 8)
    assert pred["proprio"].shape == (B, S, horizon, obs["proprio"].shape[-1])
    assert torch.isfinite(pred["latents"]).all() and torch.isfinite(pred["proprio"]).all()
    again = wm.rollout(ctx, acts, seed=3)
    torch.testing.assert_close(again["latents"], pred["latents"], rtol=0, atol=0)
    other = wm.rollout(ctx, acts, seed=4)
    assert not torch.equal(other["latents"], pred["latents"])  # the seed drives the sampling noise
    # Candidates are rolled out independently: changing another candidate's actions leaves
    # candidate 0's prediction unchanged, and candidate 1's does change (slightly: the action
    # embedding is zero-initialised and trained for 4 steps only).
    changed = acts.clone()
    changed[:, 1] = -changed[:, 1]
    other_actions = wm.rollout(ctx, changed, seed=3)
    torch.testing.assert_close(other_actions["latents"][:, 0], pred["latents"][:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(other_actions["latents"][:, 1], pred["latents"][:, 1])


def test_rollout_with_context_history(wm, obs):
    seq = wm.encode({"pixels": np.stack([obs["pixels"]] * 2, 1), "proprio": np.stack([obs["proprio"]] * 2, 1)})
    ctx = {**seq, "actions": torch.zeros(B, 1, AW)}
    pred = wm.rollout(ctx, actions(4))  # Tc=2 of window 3: one new frame per window
    assert pred["latents"].shape == (B, S, 4, 3, 8, 8)


def test_rollout_does_not_depend_on_chunk_size(checkpoint, wm, obs):
    ctx = wm.encode(obs)
    acts = actions(5)
    reference = wm.rollout(ctx, acts, seed=7)  # chunk_size 1024: one chunk
    for chunk_size in (1, 4):
        chunked = WorldModel.from_checkpoint(checkpoint, chunk_size=chunk_size, precision="fp32").rollout(ctx, acts, seed=7)
        torch.testing.assert_close(chunked["latents"], reference["latents"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(chunked["proprio"], reference["proprio"], rtol=1e-5, atol=1e-5)


def test_gradient_flows_to_actions(wm, obs):
    ctx = wm.encode(obs)
    acts = actions(5).requires_grad_(True)
    pred = wm.rollout(ctx, acts)
    pred["latents"].square().mean().backward()
    assert acts.grad is not None and torch.isfinite(acts.grad).all()
    assert acts.grad.abs().sum() > 0
    # Each candidate's cost depends only on its own actions.
    acts2 = actions(5).requires_grad_(True)
    wm.rollout(ctx, acts2)["latents"][:, 0].sum().backward()
    assert acts2.grad[:, 0].abs().sum() > 0 and acts2.grad[:, 1:].abs().sum() == 0


def test_rollout_rejects_bad_inputs(wm, obs):
    ctx = wm.encode(obs)
    with pytest.raises(ValueError, match="actions must be"):
        wm.rollout(ctx, torch.zeros(B, S, 2, AW - 1))  # wrong action width
    with pytest.raises(ValueError, match="actions must be"):
        wm.rollout(ctx, torch.zeros(B, 2, AW))  # no candidate axis
    nan = actions(2)
    nan[1, 0, 1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        wm.rollout(ctx, nan)
    with pytest.raises(ValueError, match="batch"):
        wm.rollout(ctx, torch.zeros(B + 1, S, 2, AW))
    with pytest.raises(ValueError, match="proprio"):
        wm.rollout({"latents": ctx["latents"]}, actions(2))


def test_decode(wm, obs):
    enc = wm.encode(obs)
    frames = wm.decode(enc["latents"][:, None])
    assert frames.shape == (B, 1, 16, 16, 3) and frames.dtype == torch.uint8
    pred = wm.rollout(enc, actions(5))
    video = wm.decode(pred["latents"][:, 0])
    assert video.shape == (B, 5, 16, 16, 3) and video.dtype == torch.uint8
    # Decoding the encoded frames gives back the 8x8 block means of the observation.
    blocks = torch.as_tensor(obs["pixels"]).float().view(B, 8, 2, 8, 2, 3).mean((2, 4))
    expected = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert (frames[:, 0].float() - expected).abs().max() <= 1


def test_missing_corrupt_and_foreign_checkpoints(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        WorldModel.from_checkpoint(tmp_path / "missing.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        WorldModel.from_checkpoint(truncated)
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        WorldModel.from_checkpoint(text)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, foreign)
    with pytest.raises(ValueError, match="not a wmplan world-model checkpoint"):
        WorldModel.from_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        WorldModel.from_checkpoint(tmp_path)  # a directory is not a checkpoint file


def test_bf16_rollout_close_to_fp32(wm, checkpoint, obs):
    ctx = wm.encode(obs)
    acts = actions(3)
    fast = WorldModel.from_checkpoint(checkpoint, precision="bf16").rollout(ctx, acts, seed=5)
    exact = wm.rollout(ctx, acts, seed=5)
    assert fast["latents"].dtype == torch.float32
    err = (fast["latents"] - exact["latents"]).abs().mean() / exact["latents"].abs().mean()
    assert err < 0.05
    with pytest.raises(ValueError, match="precision"):
        WorldModel.from_checkpoint(checkpoint, precision="fp16")


def test_episode_rollout_does_not_depend_on_its_batch(wm, obs):
    """Per-episode seeds: an episode's predictions are the same alone, batched, or with fewer
    candidates, and its candidates share the episode's noise (common random numbers)."""
    ctx = wm.encode(obs)
    acts = actions(5)
    seeds = [101, 202]
    full = wm.rollout(ctx, acts, seed=seeds)
    for b in range(B):
        alone = wm.rollout({k: v[b : b + 1] for k, v in ctx.items()}, acts[b : b + 1], seed=[seeds[b]])
        for key in ("latents", "proprio"):
            torch.testing.assert_close(alone[key][0], full[key][b], atol=1e-6, rtol=1e-6)
    fewer = wm.rollout(ctx, acts[:, 1:], seed=seeds)
    torch.testing.assert_close(fewer["latents"], full["latents"][:, 1:], atol=1e-6, rtol=1e-6)
    same = acts[:, :1].expand(B, S, 5, AW)  # equal actions and shared noise: equal predictions
    pred = wm.rollout(ctx, same, seed=seeds)["latents"]
    torch.testing.assert_close(pred[:, 1:], pred[:, :1].expand_as(pred[:, 1:]), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="one seed per episode"):
        wm.rollout(ctx, acts, seed=[1, 2, 3])


def test_context_cache_rollout_matches_uncached(wm, obs):
    ctx = wm.encode(obs)
    acts = actions(5)
    cached = wm.rollout(ctx, acts, seed=9)
    uncached = wm.rollout(ctx, acts, seed=9, sampler=dataclasses.replace(wm.sampler, context_cache=False))
    for key in ("latents", "proprio"):
        torch.testing.assert_close(cached[key], uncached[key], atol=1e-5, rtol=1e-5)


def test_precision_auto_resolves(checkpoint, monkeypatch):
    import wmplan.hardware as hardware

    for speedup, expected in ((3.0, "bf16"), (0.01, "fp32")):
        monkeypatch.setattr(hardware, "bf16_speedup", lambda kind="cpu", size=256, s=speedup: s)
        monkeypatch.delenv(hardware.AUTO_PRECISION_ENV, raising=False)  # time again, as a fresh process would
        assert WorldModel.from_checkpoint(checkpoint).precision == expected
    assert WorldModel.from_checkpoint(checkpoint, precision="bf16").precision == "bf16"  # explicit wins


def test_chunk_size_auto_and_bad_values(checkpoint):
    from wmplan.rollout import ACTIVATION_BUDGET, resolve_chunk_size

    wm = WorldModel.from_checkpoint(checkpoint, precision="fp32")
    m = wm.model.cfg
    h, w = m.latent_hw
    tokens = (h // m.patch_size) * (w // m.patch_size) + int(m.proprio_dim > 0)
    per_candidate = wm.window * tokens * 2 * int(m.mlp_ratio * m.width) * 4
    assert wm.chunk_size == max(1, ACTIVATION_BUDGET // per_candidate)
    assert resolve_chunk_size("auto", wm.model, wm.window, torch.device("cuda")) == 1024
    assert WorldModel.from_checkpoint(checkpoint, chunk_size=7).chunk_size == 7
    for bad in (0, -3, "fast", 2.5):
        with pytest.raises(ValueError, match="chunk_size"):
            WorldModel.from_checkpoint(checkpoint, chunk_size=bad)
