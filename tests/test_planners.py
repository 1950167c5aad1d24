"""Planners on a toy differentiable model with a known optimum: a point mass whose latent is its position."""

import pytest
import torch
from omegaconf import OmegaConf

from wmplan.config_dir import config_path
from wmplan.planners import PLANNERS, build_objective, build_planner
from wmplan.planners.objectives import LatentDistance

CONFIGS = config_path("planner")
STEP = 0.1  # position change per unit action
H, A = 5, 2
START = torch.tensor([[0.0, 0.0], [0.1, -0.2], [-0.3, 0.2]])  # [B, 2]
REACHABLE = torch.tensor([[0.3, -0.2], [0.4, 0.1], [-0.5, 0.0]])  # within H * STEP = 0.5 per axis
MSE_LAST = LatentDistance("mse", "last")

FAST = {  # enough search to solve the toy problem, small enough for a one-core test
    "cem": dict(name="cem", num_samples=100, topk=10, iterations=15),
    "mppi": dict(name="mppi", num_samples=100, iterations=20, noise_sigma=0.3, temperature=0.1),
    "gradient": dict(name="gradient", restarts=4, iterations=150, lr=0.05),
    "random_shooting": dict(name="random_shooting", num_samples=2000),
}


def point_mass(start: torch.Tensor):
    """rollout_fn: positions after each action, as latents [B, S, H, 2, 1, 1]; differentiable."""

    def rollout(actions):  # [B, S, H, 2]
        pos = start[:, None, None] + STEP * actions.cumsum(dim=2)
        return {"latents": pos[..., None, None], "proprio": None}

    return rollout


def goal_of(points):
    return {"latents": points[:, :, None, None], "proprio": None}


def plan(planner, goal_points, init=None, seed=0, objective=MSE_LAST, rollout=None):
    rollout = rollout or point_mass(START)
    g = torch.Generator().manual_seed(seed)
    return planner.plan(rollout, objective, goal_of(goal_points), len(START), H, A, init=init, generator=g)


def final_position(actions):
    return START + STEP * actions.sum(dim=1)


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_reaches_reachable_goal(name):
    result = plan(build_planner(FAST[name]), REACHABLE)
    err = (final_position(result.actions) - REACHABLE).abs().max()
    assert err < 0.02, f"{name} ends {err:.3f} from the goal"
    assert result.cost.shape == (3,) and (result.cost < 4e-4).all()


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient", "random_shooting", "random"])
def test_unreachable_goal_pushes_to_the_bounds(name):
    """Goal far outside the reachable box: the optimum is every action at the bound (1, -1)."""
    planner = build_planner(FAST.get(name, {"name": name}))
    result = plan(planner, torch.tensor([[5.0, -5.0]] * 3))
    assert result.actions.shape == (3, H, A)
    assert result.actions.abs().max() <= 1.0
    if name in ("cem", "mppi", "gradient"):
        optimum = torch.tensor([1.0, -1.0]).expand(3, H, A)
        assert (result.actions - optimum).abs().max() < 0.1


def test_random_shooting_beats_random_plans():
    goal = REACHABLE
    shooting = plan(build_planner(FAST["random_shooting"]), goal)
    random = [plan(build_planner({"name": "random"}), goal, seed=s).cost for s in range(20)]
    assert (shooting.cost < torch.stack(random).median(dim=0).values / 10).all()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(name="cem", num_samples=8, topk=2, iterations=1, var_scale=0.05),
        dict(name="mppi", num_samples=8, iterations=1, noise_sigma=0.05),
        dict(name="gradient", restarts=1, iterations=1, lr=0.01),
        dict(name="random_shooting", num_samples=8),
    ],
)
def test_warm_start_is_used(cfg):
    """Too little search to solve from scratch; started at the optimum it stays there."""
    planner = build_planner(cfg)
    optimum = ((REACHABLE - START) / (STEP * H))[:, None].expand(3, H, A).contiguous()
    warm, cold = plan(planner, REACHABLE, init=optimum), plan(planner, REACHABLE)
    assert (warm.cost < 1e-4).all()
    assert (cold.cost > 10 * warm.cost + 1e-3).all()


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient", "random_shooting"])
def test_same_seed_same_plan(name):
    planner = build_planner({**FAST[name], "iterations": 2} if "iterations" in FAST[name] else FAST[name])
    a, b, c = (plan(planner, REACHABLE, seed=s).actions for s in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["cem", "gradient"])
def test_chunked_scoring_gives_the_same_plan(name):
    """max_batch splits candidates across rollout calls; with a deterministic model the plan is unchanged."""
    cfg = {**FAST[name], "iterations": 3}
    calls = []

    def counting(actions):
        calls.append(actions.shape[1])
        return point_mass(START)(actions)

    whole = plan(build_planner({**cfg, "max_batch": 10_000}), REACHABLE)
    chunked = plan(build_planner({**cfg, "max_batch": 6}), REACHABLE, rollout=counting)
    assert max(calls) == 2  # 6 candidates per call over 3 episodes
    assert torch.allclose(whole.actions, chunked.actions, atol=1e-6)


def test_nan_cost_is_an_error():
    def diverging(actions):
        return {"latents": torch.full((*actions.shape[:3], 2, 1, 1), float("nan")), "proprio": None}

    with pytest.raises(ValueError, match="NaN"):
        plan(build_planner(FAST["cem"]), REACHABLE, rollout=diverging)


def test_gradient_needs_a_differentiable_rollout():
    def detached(actions):
        return point_mass(START)(actions.detach())

    with pytest.raises(ValueError, match="differentiable"):
        plan(build_planner(FAST["gradient"]), REACHABLE, rollout=detached)


def test_bad_arguments_are_errors():
    planner = build_planner(FAST["cem"])
    with pytest.raises(ValueError, match="init must be"):
        plan(planner, REACHABLE, init=torch.zeros(3, H + 1, A))
    with pytest.raises(ValueError, match="goal"):
        planner.plan(point_mass(START), MSE_LAST, goal_of(REACHABLE[:2]), 3, H, A)
    with pytest.raises(ValueError, match="unknown planner"):
        build_planner({"name": "cmaes"})
    with pytest.raises(ValueError, match="bad planner"):
        build_planner({"name": "cem", "samples": 10})
    with pytest.raises(ValueError, match="topk"):
        build_planner({"name": "cem", "num_samples": 10, "topk": 20})


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_planner_configs_build(path):
    cfg = OmegaConf.load(path)
    planner = build_planner(cfg)
    assert isinstance(planner, PLANNERS[cfg.name][1])


def test_planners_accept_a_composed_objective():
    objective = build_objective({"distance": "mse", "frames": "all", "action_weight": 0.01})
    result = plan(build_planner(FAST["cem"]), REACHABLE, objective=objective)
    assert (final_position(result.actions) - REACHABLE).abs().max() < 0.1


def test_colored_noise_has_unit_variance_and_correlates_env_time_more_as_beta_grows():
    from wmplan.planners.base import colored_noise

    def corr(u, v):
        return torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1].item()

    def lag1(x):  # correlation of successive env actions, per action dimension
        return corr(x[:, :, :-1], x[:, :, 1:])

    a = 2
    lags = {}
    for beta in (0.0, 1.0, 2.0):
        for T in (25, 20):  # odd and even env-time lengths (Nyquist term)
            noise = colored_noise((64, 500, T, a), beta, torch.Generator().manual_seed(0), torch.device("cpu"))
            assert noise.shape == (64, 500, T, a) and noise.dtype == torch.float32
            assert abs(noise.std().item() - 1.0) < 0.03, (beta, T)
            assert abs(noise.mean().item()) < 0.03
        lags[beta] = lag1(noise)
        assert abs(corr(noise[..., 0], noise[..., 1])) < 0.02  # action dimensions stay independent
    assert abs(lags[0.0]) < 0.02 and 0.3 < lags[1.0] < lags[2.0] < 1.0, lags
    one = colored_noise((1, 1, 15, a), 2.0, torch.Generator().manual_seed(1), torch.device("cpu"))
    again = colored_noise((1, 1, 15, a), 2.0, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(one, again)


@pytest.mark.parametrize("name", ["cem", "mppi"])
def test_colored_noise_planners_reach_the_goal_and_check_frameskip(name):
    planner = build_planner({**FAST[name], "noise_beta": 2.0})
    g = torch.Generator().manual_seed(0)
    result = planner.plan(point_mass(START), MSE_LAST, goal_of(REACHABLE), len(START), H, A, generator=g, frameskip=1)
    assert (final_position(result.actions) - REACHABLE).abs().max() < 0.02
    with pytest.raises(ValueError, match="frameskip"):
        planner.plan(point_mass(START), MSE_LAST, goal_of(REACHABLE), len(START), H, A, frameskip=3)
    with pytest.raises(ValueError, match="noise_beta"):
        build_planner({**FAST[name], "noise_beta": -1.0})
    with pytest.raises(ValueError, match="noise_beta"):
        build_planner({**FAST[name], "noise_beta": float("nan")})


@pytest.mark.parametrize("name", ["cem", "mppi"])
def test_scale_sigma_samples_each_action_dimension_at_its_own_scale(name):
    """scale_sigma([0.1, 1]): the first sampled candidates spread 10x less in action dimension 0."""
    planner = build_planner({**FAST[name], "iterations": 1, "num_samples": 400})
    planner.scale_sigma([0.1, 1.0])
    seen = []

    def recording(pred, goal, actions):  # actions [B, S, H, A]
        seen.append(actions)
        return MSE_LAST(pred, goal, actions)

    plan(planner, REACHABLE, objective=recording)
    samples = seen[0][:, 1:]  # candidate 0 is the mean (zeros)
    spread = samples.reshape(-1, A).std(dim=0)
    sigma = FAST[name].get("noise_sigma", 1.0)
    assert abs(spread[0] - 0.1 * sigma) < 0.02 * sigma and spread[1] > 4 * spread[0]
    with pytest.raises(ValueError, match="sigma scale must be finite and > 0"):
        planner.scale_sigma([0.1, 0.0])
    planner.scale_sigma([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="the sigma scale has 3 dimensions, the env's actions 2"):
        plan(planner, REACHABLE)
