"""NanoWM transformer: shapes, causality, action conditioning, proprio, errors, sizes."""

from __future__ import annotations


import pytest
import torch
import yaml

from wmplan.config_dir import config_path
from wmplan.models.action_injection import INJECTIONS
from wmplan.models.attention import apply_rope, rope_1d, rope_2d
from wmplan.models.nanowm import NanoWM, NanoWMConfig, nanowm_config, patchify, shift_actions, unpatchify

CONFIGS = config_path("model")
B, T, C, H, A, P = 2, 4, 4, 8, 6, 3


def tiny(**overrides) -> NanoWMConfig:
    return nanowm_config("tiny", 2, **{"latent_channels": C, "latent_size": H, "action_dim": A, **overrides})


def build(seed: int = 0, randomize: bool = True, **overrides) -> NanoWM:
    """A tiny model; ``randomize`` replaces the zero-init layers so that every path is live."""
    torch.manual_seed(seed)
    model = NanoWM(tiny(**overrides))
    if randomize:
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0.0, 0.2)
    return model.eval()


def inputs(seed: int = 0, proprio: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, T, C, H, H, generator=g),
        "t": torch.rand(B, T, generator=g) * 1000,
        "actions": shift_actions(torch.randn(B, T - 1, A, generator=g)),
        "proprio": torch.randn(B, T, P, generator=g) if proprio else None,
    }


@pytest.mark.parametrize("injection", INJECTIONS)
def test_shapes_every_injection(injection):
    model = build(action_injection=injection, proprio_dim=P)
    out, out_proprio = model(**inputs(proprio=True))
    assert out.shape == (B, T, C, H, H) and out_proprio.shape == (B, T, P)
    assert torch.isfinite(out).all() and torch.isfinite(out_proprio).all()
    out, out_proprio = build(action_injection=injection)(**inputs())
    assert out.shape == (B, T, C, H, H) and out_proprio is None


@pytest.mark.parametrize("injection", INJECTIONS)
def test_zero_init_starts_at_zero_and_actions_learn(injection):
    torch.manual_seed(0)
    model = NanoWM(tiny(action_injection=injection))
    batch = inputs()
    assert torch.all(model(**batch)[0] == 0)  # adaLN-Zero blocks and a zero head
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(B, T, C, H, H, generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        optimizer.zero_grad()
        model(**batch)[0].sub(target).pow(2).mean().backward()
        optimizer.step()
    action_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if "action" in n]
    assert all(g > 0 for g in action_grads)  # no action weight is stuck at zero gradient
    other = dict(batch, actions=torch.randn(B, T, A))
    with torch.no_grad():
        assert not torch.allclose(model(**batch)[0], model(**other)[0], atol=1e-5)
        assert model.action_embedding_rms(batch["actions"]) > 0


@pytest.mark.parametrize("injection", ["additive", "cross_attention"])
def test_temporal_causality(injection):
    batch = inputs(proprio=True)
    changed_x = dict(batch, x=batch["x"].clone())
    changed_x["x"][:, 3] += 1.0
    changed_a = dict(batch, actions=batch["actions"].clone())
    changed_a["actions"][:, 3] += 1.0
    for causal in (True, False):
        model = build(action_injection=injection, proprio_dim=P, causal=causal)
        with torch.no_grad():
            ref, ref_p = model(**batch)
            for changed in (changed_x, changed_a):
                out, out_p = model(**changed)
                past_same = torch.allclose(out[:, :3], ref[:, :3]) and torch.allclose(out_p[:, :3], ref_p[:, :3])
                assert past_same == causal
                assert not torch.allclose(out[:, 3], ref[:, 3])


@pytest.mark.parametrize("injection", INJECTIONS)
def test_action_mask_is_the_zero_action(injection):
    model = build(action_injection=injection)
    batch = inputs()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 2] = mask[1, 1] = False
    zeroed = batch["actions"].clone()
    zeroed[0, 2] = zeroed[1, 1] = 0
    with torch.no_grad():
        masked, _ = model(**batch, action_mask=mask)
        torch.testing.assert_close(masked, model(**dict(batch, actions=zeroed))[0])
        assert not torch.allclose(masked, model(**batch)[0])


def test_proprio_token_joins_attention():
    model = build(proprio_dim=P)
    batch = inputs(proprio=True)
    with torch.no_grad():
        out, out_p = model(**batch)
        other_p = dict(batch, proprio=batch["proprio"] + 1)
        out2, out2_p = model(**other_p)
        assert not torch.allclose(out, out2)  # patches see the proprio token
        other_x = dict(batch, x=batch["x"] + 1)
        assert not torch.allclose(out_p, model(**other_x)[1])  # and it sees the patches


def test_bad_inputs_raise_clear_errors():
    model = build(proprio_dim=P)
    batch = inputs(proprio=True)
    cases = {
        "action_dim=6": dict(batch, actions=torch.zeros(B, T, A + 1)),
        "x must be": dict(batch, x=torch.zeros(B, T, C + 1, H, H)),
        "t must be": dict(batch, t=torch.zeros(B)),
        "proprio must be": dict(batch, proprio=None),
        "max_frames": dict(batch, x=torch.zeros(B, 65, C, H, H)),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            model(**bad)
    with pytest.raises(ValueError, match="action_mask"):
        model(**batch, action_mask=torch.ones(B, T))
    with pytest.raises(ValueError, match="no proprio token"):
        build()(**inputs(proprio=True))
    with pytest.raises(ValueError, match="unknown action_injection 'films'"):
        tiny(action_injection="films")
    with pytest.raises(ValueError, match="patch sizes"):
        nanowm_config("XL", 1)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        nanowm_config("tiny", 4, latent_size=(8, 6))
    with pytest.raises(ValueError, match="depth"):
        tiny(depth=3)


REFERENCE_PARAMS = {  # SPEC §2: latent 32x32x4, 7-D action, no proprio (millions)
    ("S", "additive"): 39.78, ("B", "additive"): 158.60, ("L", "additive"): 558.67, ("XL", "additive"): 823.78,
    ("B", "adaln_fuse"): 158.60, ("B", "film"): 172.77, ("B", "cross_attention"): 186.96, ("B", "adaln"): 201.12,
}


@pytest.mark.parametrize(("size", "injection"), list(REFERENCE_PARAMS))
def test_parameter_counts_match_reference(size, injection):
    with torch.device("meta"):
        model = NanoWM(nanowm_config(size, 2, action_injection=injection))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(REFERENCE_PARAMS[size, injection], rel=0.01)


def test_init_is_reproducible_from_seed():
    a, b, c = (build(seed=s, randomize=False).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bf16_autocast_forward_matches_fp32():
    model = build(proprio_dim=P)
    batch = inputs(proprio=True)
    with torch.no_grad():
        ref, _ = model(**batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, out_p = model(**batch)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out_p.float()).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g)
    table = rope_1d(12, 16)  # [2, 12, 16]
    score = lambda i, j: (apply_rope(q, table[:, i]) * apply_rope(k, table[:, j])).sum()  # noqa: E731
    torch.testing.assert_close(score(2, 5), score(6, 9))
    assert not torch.isclose(score(2, 5), score(2, 6))
    grid = rope_2d(4, 4, 16, extra_tokens=1)  # row-major 4x4 grid + one unrotated token
    cell = lambda r, c: grid[:, 4 * r + c]  # noqa: E731
    score2 = lambda a, b: (apply_rope(q, cell(*a)) * apply_rope(k, cell(*b))).sum()  # noqa: E731
    torch.testing.assert_close(score2((0, 1), (2, 3)), score2((1, 0), (3, 2)))
    assert not torch.isclose(score2((0, 1), (2, 3)), score2((0, 1), (3, 2)))
    torch.testing.assert_close(apply_rope(q, grid[:, 16]), q)


def test_patchify_round_trip_and_shift_actions():
    x = torch.randn(2, 3, 4, 8, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 3, 12, 16)
    torch.testing.assert_close(tokens[0, 0, 1], x[0, 0, :, 0:2, 2:4].reshape(-1))  # row-major patches
    torch.testing.assert_close(unpatchify(tokens, 4, 8, 6, 2), x)
    actions = torch.randn(2, 3, 5)
    shifted = shift_actions(actions)
    assert shifted.shape == (2, 4, 5) and torch.all(shifted[:, 0] == 0)
    torch.testing.assert_close(shifted[:, 1:], actions)


@pytest.mark.parametrize(("name", "size"), [("nanowm_s2", "S"), ("nanowm_b2", "B"), ("nanowm_l2", "L"),
                                            ("nanowm_xl2", "XL"), ("mini", "mini"), ("tiny", "tiny")])
def test_model_configs_are_the_named_sizes(name, size):
    fields = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert NanoWMConfig(**fields) == nanowm_config(size, 2)
