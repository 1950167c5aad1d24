"""Objective values on hand-made tensors, composition, multi-scale slopes, configs and errors."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from wmplan.config_dir import config_path
from wmplan.envs.pusht import PushTEnv
from wmplan.planners import build_objective
from wmplan.planners.objectives import (
    ActionMagnitude,
    LatentDistance,
    ProprioDistance,
    WeightedSum,
    blurred,
    make_views,
    pooled,
)

CONFIGS = config_path("objective")
NO_ACTIONS = torch.zeros(1, 1, 3, 2)


def pred_of(latents, proprio=None):
    return {"latents": latents, "proprio": proprio}


def frames_at(values):
    """Latents [1, 1, H, 1, 1, 2] whose frame i is the vector values[i]."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, len(values), 1, 1, 2)


GOAL = {"latents": torch.tensor([0.0, 0.0]).view(1, 1, 1, 2), "proprio": torch.tensor([[1.0, 1.0]])}
PRED = frames_at([[2.0, 0.0], [0.0, 4.0], [1.0, 1.0]])  # per-frame MSE to GOAL: 2, 8, 1


def test_mse_last_all_and_weighted_frames():
    assert LatentDistance("mse", "last")(pred_of(PRED), GOAL, NO_ACTIONS).item() == pytest.approx(1.0)
    assert LatentDistance("mse", "all")(pred_of(PRED), GOAL, NO_ACTIONS).item() == pytest.approx(11 / 3)
    weighted = LatentDistance("mse", [1.0, 0.0, 3.0])(pred_of(PRED), GOAL, NO_ACTIONS)
    assert weighted.item() == pytest.approx((2 + 3 * 1) / 4)


def test_nmse_divides_by_the_goal_variance():
    goal = {"latents": torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)}  # variance (unbiased) 2
    pred = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2, 1, 1)  # MSE 0.5
    assert LatentDistance("nmse")(pred_of(pred), goal, torch.zeros(1, 1, 1, 2)).item() == pytest.approx(0.25)


def test_cosine_distance():
    goal = {"latents": torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)}
    pred = frames_at([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    per_frame = [LatentDistance("cosine", w)(pred_of(pred), goal, NO_ACTIONS).item() for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    assert per_frame == pytest.approx([0.0, 1.0, 2.0])


def test_proprio_and_action_terms():
    proprio = torch.tensor([[1.0, 1.0], [1.0, 3.0], [0.0, 1.0]]).view(1, 1, 3, 2)  # MSE to (1, 1): 0, 2, 0.5
    assert ProprioDistance("last")(pred_of(PRED, proprio), GOAL, NO_ACTIONS).item() == pytest.approx(0.5)
    assert ProprioDistance("all")(pred_of(PRED, proprio), GOAL, NO_ACTIONS).item() == pytest.approx(2.5 / 3)
    actions = torch.tensor([0.5, -0.5, 1.0, 0.0, 0.0, 0.0]).view(1, 1, 3, 2)
    assert ActionMagnitude()(pred_of(PRED), GOAL, actions).item() == pytest.approx(1.5 / 6)


def test_objectives_compose_as_a_weighted_sum():
    proprio = torch.zeros(1, 1, 3, 2)  # MSE 1 to the goal proprio
    actions = torch.ones(1, 1, 3, 2)
    objective = build_objective({"frames": "last", "proprio_weight": 2.0, "action_weight": 0.5})
    assert objective(pred_of(PRED, proprio), GOAL, actions).item() == pytest.approx(1.0 + 2 * 1.0 + 0.5 * 1.0)
    manual = WeightedSum([(3.0, LatentDistance("mse", "all")), (1.0, ActionMagnitude())])
    assert manual(pred_of(PRED), GOAL, actions).item() == pytest.approx(3 * 11 / 3 + 1)


def test_costs_are_per_episode_and_candidate():
    """[B=2, S=3]: each candidate is scored against its own episode's goal."""
    goal = {"latents": torch.tensor([[0.0], [10.0]]).view(2, 1, 1, 1)}
    pred = torch.arange(6.0).view(2, 3, 1, 1, 1, 1)  # episode 0: 0,1,2; episode 1: 3,4,5
    cost = LatentDistance()(pred_of(pred), goal, torch.zeros(2, 3, 1, 1))
    assert torch.equal(cost, torch.tensor([[0.0, 1.0, 4.0], [49.0, 36.0, 25.0]]))


def test_pyramid_views_average_blocks():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(pooled(2)(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    # MSE over 2 levels = mean of the full-resolution and the 2x-pooled MSEs
    goal = {"latents": torch.zeros(1, 1, 4, 4)}
    cost = LatentDistance("mse", "last", make_views(2, []))(pred_of(x.view(1, 1, 1, 1, 4, 4)), goal, NO_ACTIONS)
    expected = (x.pow(2).mean() + pooled(2)(x).pow(2).mean()) / 2
    assert cost.item() == pytest.approx(expected.item())


def test_blur_keeps_flat_images_flat_and_mass_inside():
    flat = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(blurred(4.0)(flat), flat)
    dot = torch.zeros(1, 1, 32, 32)
    dot[0, 0, 16, 16] = 1.0
    out = blurred(2.0)(dot)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 0, 16, 16] == out.max() and out[0, 0, 16, 18] < out[0, 0, 16, 17]


def test_blur_matches_a_direct_2d_gaussian_away_from_edges():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    taps = torch.arange(-6.0, 7.0)
    g = torch.exp(-0.5 * (taps / 2.0) ** 2)
    kernel = torch.outer(g, g) / g.sum() ** 2  # [13, 13]
    direct = F.conv2d(x, kernel.expand(3, 1, 13, 13), groups=3)  # valid region [18, 18]
    assert torch.allclose(blurred(2.0)(x)[..., 6:-6, 6:-6], direct, atol=1e-5)


def blob(cx: float, size: int = 64, sigma: float = 1.7) -> torch.Tensor:
    """A Wall-like dot: Gaussian of std ``sigma`` at (row 32, column cx), as latents [1, 1, 1, 1, h, w]."""
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    return torch.exp(-((yy - 32) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).view(1, 1, 1, 1, size, size)


def test_multiscale_has_slope_where_plain_mse_is_flat():
    """Candidates 30 and 18 px from the goal dot: plain MSE ties, blurred views prefer the closer."""
    goal = {"latents": blob(50)[0, 0]}
    far, near = pred_of(blob(20)), pred_of(blob(32))
    plain = LatentDistance("mse", "last")
    blur_mse = LatentDistance("mse", "last", make_views(1, [2.0, 4.0, 8.0, 16.0]))
    blur_nmse = build_objective(OmegaConf.load(CONFIGS / "multiscale_blur.yaml"))
    assert plain(far, goal, NO_ACTIONS).item() == pytest.approx(plain(near, goal, NO_ACTIONS).item(), rel=1e-4)
    # raw MSE of blurred views slopes, but is swamped by the flat full-resolution view ...
    assert blur_mse(near, goal, NO_ACTIONS) < blur_mse(far, goal, NO_ACTIONS)
    # ... normalising each view by the goal's variance makes the slope count
    assert blur_nmse(near, goal, NO_ACTIONS) < 0.9 * blur_nmse(far, goal, NO_ACTIONS)


def test_objective_configs_build_and_score():
    pred = {**pred_of(torch.rand(2, 4, 5, 3, 16, 16), torch.rand(2, 4, 5, 2)), "pose": torch.rand(2, 4, 5, 6)}
    goal = {"latents": torch.rand(2, 3, 16, 16), "proprio": torch.rand(2, 2), "pose": torch.rand(2, 6)}
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in paths} >= {"dino_wm_default", "multiscale_blur", "multiscale_pyramid", "pose_probe"}
    for path in paths:  # pose_probe scores pose features with the env's pose_cost
        cost = build_objective(OmegaConf.load(path), PushTEnv())(pred, goal, torch.rand(2, 4, 5, 4))
        assert cost.shape == (2, 4) and torch.isfinite(cost).all() and (cost >= 0).all(), path.stem


def test_pose_term_needs_a_pose_cost_and_pose_predictions():
    with pytest.raises(ValueError, match="pose_weight > 0 needs the planning env's pose_cost"):
        build_objective({"pose_weight": 1.0})
    objective = build_objective({"latent_weight": 0.0, "pose_weight": 1.0}, PushTEnv())
    with pytest.raises(ValueError, match="needs a world model with a pose probe"):
        objective(pred_of(torch.rand(2, 4, 5, 3, 16, 16), None), {"latents": torch.rand(2, 3, 16, 16)}, NO_ACTIONS)


def test_bad_objectives_are_errors():
    with pytest.raises(ValueError, match="unknown latent distance"):
        build_objective({"distance": "l1"})
    with pytest.raises(ValueError, match="unknown frames"):
        build_objective({"frames": "first"})
    with pytest.raises(ValueError, match="bad objective"):
        build_objective({"alpha": 1.0})
    with pytest.raises(ValueError, match="at least one view"):
        build_objective({"pyramid_levels": 0})
    with pytest.raises(ValueError, match="frame weights"):
        LatentDistance("mse", [1.0, 1.0])(pred_of(PRED), GOAL, NO_ACTIONS)
    with pytest.raises(ValueError, match="do not match"):
        LatentDistance()(pred_of(torch.zeros(1, 1, 3, 1, 1, 3)), GOAL, NO_ACTIONS)
    with pytest.raises(ValueError, match="proprio"):
        build_objective({"proprio_weight": 1.0})(pred_of(PRED), GOAL, NO_ACTIONS)
    with pytest.raises(ValueError, match="exceeds"):
        LatentDistance("mse", "last", make_views(3, []))(pred_of(PRED), GOAL, NO_ACTIONS)


def test_gradients_flow_through_every_term():
    latents = torch.rand(1, 2, 3, 1, 8, 8, requires_grad=True)
    proprio = torch.rand(1, 2, 3, 2, requires_grad=True)
    actions = torch.rand(1, 2, 3, 2, requires_grad=True)
    goal = {"latents": torch.rand(1, 1, 8, 8), "proprio": torch.rand(1, 2)}
    objective = build_objective({"blur_sigmas": [2.0], "proprio_weight": 1.0, "action_weight": 1.0, "frames": "all"})
    objective(pred_of(latents, proprio), goal, actions).sum().backward()
    for t in (latents, proprio, actions):
        assert t.grad is not None and t.grad.abs().sum() > 0
