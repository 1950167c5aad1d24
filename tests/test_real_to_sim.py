"""Real-to-sim policy evaluation (wmplan.real_to_sim) on tiny Wall runs: the closed loop feeds the
model's predictions back, the probe, the rank statistics, the oracle as a perfect world model,
determinism and input checks."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import RESOLUTION, compose_config

from wmplan.envs import make
from wmplan.planners.mpc import sample_episodes
from wmplan.real_to_sim import (
    GoalPolicy,
    StateProbe,
    build_policies,
    evaluate,
    fit_probe,
    imagine,
    rank_agreement,
    run_real,
    sliding_context,
    start_observations,
    table,
)
from wmplan.rollout import WorldModel
from wmplan.seeding import stream_seed

FRAMESKIP, STEPS = 5, 3
POLICIES = "policies=[{name: scripted, policy: scripted}, {name: noisy, policy: scripted, noise: 1.0}, " \
           "{name: lazy, policy: scripted, active_steps: 1}, {name: random, policy: random}]"


def r2s_config(world_model, data, out_dir, *extra: str):
    return compose_config("real_to_sim", [
        "env=wall", f"env.resolution={RESOLUTION}", f"world_model={world_model}", f"data={data}",
        f"out_dir={out_dir}", "starts=3", "budget_env_steps=30", "seed=4", "probe.val_fraction=0.3",
        "probe.max_frames=60", POLICIES, *extra,
    ])


def without_timing(results: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(results)).items() if k not in ("timing", "provenance")}


@pytest.fixture(scope="module")
def wall_env():
    return make("wmplan/Wall-v0", frameskip=FRAMESKIP, resolution=RESOLUTION)


@pytest.fixture(scope="module")
def wm(checkpoint):
    return WorldModel.from_checkpoint(checkpoint)


class Recording(GoalPolicy):
    """The Wall door policy with noise, remembering every observation it was shown."""

    def __init__(self, inner: GoalPolicy, needs_pixels: bool = False):
        self.inner, self.needs_pixels, self.seen = inner, needs_pixels, []
        self.needs_proprio = True

    def __call__(self, obs):
        self.seen.append({k: np.array(v) for k, v in obs.items()})
        return self.inner(obs)


def recorded_policies(env, episodes, needs_pixels=False):
    inner = build_policies({"noisy": {"policy": "scripted", "noise": 0.5}}, env, episodes, seed=1)
    return [Recording(p, needs_pixels) for p in inner]


def test_closed_loop_feeds_the_models_predictions_back(wm, wall_env):
    """Each policy sees the real start, then the model's predicted proprio (and decoded frames);
    each step is the model's rollout from its own previous prediction with that step's seed."""
    episodes = sample_episodes(wall_env, 2, seed=3)
    starts = [s for s, _ in episodes]
    policies = recorded_policies(wall_env, episodes, needs_pixels=True)
    seeds = [11, 12]
    out = imagine(wm, policies, start_observations(wall_env, starts), STEPS, seeds)
    assert out["latents"].shape[:2] == (2, STEPS + 1) and out["actions"].shape == (2, STEPS, 2 * FRAMESKIP)
    predicted = wm.module.denormalize_proprio(out["proprio"]).double().numpy()  # [B, T+1, P]
    decoded = wm.decode(out["latents"]).numpy()  # [B, T+1, H, W, 3]
    for b, policy in enumerate(policies):
        seen = np.stack([o["proprio"] for o in policy.seen])  # [T, P]
        np.testing.assert_allclose(seen[0], starts[b][:2])  # the real start ...
        np.testing.assert_array_equal(seen[1:], predicted[b, 1:STEPS])  # ... then predictions
        np.testing.assert_array_equal(np.stack([o["pixels"] for o in policy.seen[1:]]), decoded[b, 1:STEPS])
        np.testing.assert_array_equal(out["observed"][b], seen)
    for t in range(STEPS):  # frame t+1 is the model's one step from frame t (context_frames = 1)
        context = {"latents": out["latents"][:, t], "proprio": out["proprio"][:, t]}
        step = wm.rollout(context, out["actions"][:, None, t:t + 1], seed=[stream_seed(s, t) for s in seeds])
        torch.testing.assert_close(step["latents"][:, 0, 0], out["latents"][:, t + 1], rtol=0, atol=0)
    # The real run of the same policies sees other observations: the tiny model is far off.
    real_policies = recorded_policies(wall_env, episodes)
    real = run_real(wall_env, real_policies, starts, STEPS)
    real_seen = np.stack([[o["proprio"] for o in p.seen] for p in real_policies])
    np.testing.assert_allclose(real_seen, real[:, :STEPS, :2], rtol=1e-6)
    assert not np.allclose(real_seen[:, 1:], out["observed"][:, 1:], atol=1e-2)


def test_sliding_context_keeps_the_last_frames_and_pads_the_start():
    lat = [torch.full((1, 1, 1, 1), float(i)) for i in range(4)]
    pro = [torch.full((1, 2), float(i)) for i in range(4)]
    act = [torch.full((1, 2), 10.0 + i) for i in range(3)]
    ctx = sliding_context(lat[:1], pro[:1], [], 3, 2)
    assert ctx["latents"].flatten().tolist() == [0, 0, 0] and ctx["actions"].abs().sum() == 0
    ctx = sliding_context(lat[:2], pro[:2], act[:1], 3, 2)
    assert ctx["latents"].flatten().tolist() == [0, 0, 1] and ctx["actions"][0, :, 0].tolist() == [0, 10]
    ctx = sliding_context(lat, pro, act, 3, 2)
    assert ctx["latents"].flatten().tolist() == [1, 2, 3] and ctx["actions"][0, :, 0].tolist() == [11, 12]
    assert ctx["proprio"][0, :, 0].tolist() == [1, 2, 3]
    assert sliding_context(lat, pro, act, 1, 2)["actions"].shape == (1, 0, 2)


def test_probe_recovers_states_on_its_own_dataset(wm, wall_data):
    cfg = {"features": "latents+proprio", "pool": 16, "alpha": 1e-3, "max_frames": 200, "val_fraction": 0.3,
           "split_seed": 0, "source": "encoded"}
    probe, info = fit_probe(wm, cfg, wall_data, FRAMESKIP, seed=0)
    assert info["val"]["r2"][2] is None  # the door never moves: R^2 undefined
    assert min(info["val"]["r2"][:2]) > 0.99 and max(info["val"]["rmse"]) < 1.0  # grid units (65 wide)
    proprio_only = fit_probe(wm, {**cfg, "features": "proprio"}, wall_data, FRAMESKIP, seed=0)[1]
    assert min(proprio_only["val"]["r2"][:2]) > 0.99999  # Wall's proprio is the dot's position
    pixels_only = fit_probe(wm, {**cfg, "features": "latents", "alpha": 10.0}, wall_data, FRAMESKIP, seed=0)[1]
    assert pixels_only["train"]["r2_mean"] > 0.9  # the frames hold the position (64 train frames: no val claim)
    predicted = fit_probe(wm, {**cfg, "source": "predicted"}, wall_data, FRAMESKIP, seed=0)[1]
    assert predicted["val"]["frames"] == info["val"]["frames"]


def test_ridge_is_exact_on_linear_data_in_both_solves():
    rng = np.random.default_rng(0)
    for n, d in ((50, 5), (5, 50)):  # primal and dual
        x, w = rng.normal(size=(n, d)), rng.normal(size=(d, 3))
        y = x @ w + 2.0
        probe = StateProbe.fit(x, y, alpha=1e-9)
        np.testing.assert_allclose(probe.predict(x), y, atol=1e-5)


def test_rank_agreement_on_known_inputs():
    same = rank_agreement([0.9, 0.5, 0.1, 0.3], [1.0, 0.6, 0.0, 0.2])
    assert same["spearman_rho"] == pytest.approx(1) and same["kendall_tau"] == pytest.approx(1) and same["mmrv"] == 0
    reverse = rank_agreement([0.1, 0.5, 0.9], [0.9, 0.5, 0.1])
    assert reverse["spearman_rho"] == pytest.approx(-1) and reverse["kendall_tau"] == pytest.approx(-1)
    assert reverse["mmrv"] == pytest.approx((0.8 + 0.4 + 0.8) / 3)
    one_swap = rank_agreement([0.2, 0.1, 0.3], [0.1, 0.2, 0.3])  # by hand: d^2 = 2; 2 of 3 pairs agree
    assert one_swap["spearman_rho"] == pytest.approx(1 - 6 * 2 / (3 * 8))
    assert one_swap["kendall_tau"] == pytest.approx(1 / 3) and one_swap["mmrv"] == pytest.approx(0.2 / 3)
    assert one_swap["rank_estimated"] == [2, 3, 1] and one_swap["rank_real"] == [3, 2, 1]
    assert rank_agreement([0.5, 0.5, 0.1], [0.6, 0.2, 0.1])["rank_estimated"] == [1.5, 1.5, 3]
    flat = rank_agreement([0.2, 0.2], [0.1, 0.3])
    assert flat["spearman_rho"] is None and flat["kendall_tau"] is None
    with pytest.raises(ValueError, match="at least 2"):
        rank_agreement([0.1], [0.2])


def test_oracle_world_model_estimates_the_real_success(wall_data, tmp_path):
    """The true simulator as the world model and a near-exact probe: every rollout is judged as
    in the real env, noisy policies included (their noise is the same in both runs)."""
    results = evaluate(r2s_config("oracle", wall_data, tmp_path, "probe.alpha=1e-9", "success_rule=any"))
    for r in results["records"]:
        assert r["estimated_successes"] == r["real_successes"]
        np.testing.assert_allclose(r["estimated_states"], r["real_states"], atol=1e-4)
    pol = results["policies"]
    assert all(v["estimated_success"] == v["real_success"] for v in pol.values())
    assert pol["scripted"]["real_success"] == 1.0 and pol["random"]["real_success"] < 1.0
    assert results["mmrv"] == 0 and results["checkpoint"] == {"path": None, "sha256": None}
    assert json.loads((tmp_path / "results.json").read_text())["records"] == json.loads(json.dumps(results["records"]))
    assert "scripted" in table(results) and "Spearman rho" in table(results)


def test_same_seed_same_results(checkpoint, wall_data, tmp_path):
    first = evaluate(r2s_config(checkpoint, wall_data, tmp_path / "a"))
    again = evaluate(r2s_config(checkpoint, wall_data, tmp_path / "b"))
    assert without_timing(first) == {**without_timing(again), "config": without_timing(first)["config"]}
    assert len(first["records"]) == 4 * 3 and first["probe"]["source"] == "predicted"
    other = evaluate(r2s_config(checkpoint, wall_data, tmp_path / "c", "seed=5"))
    assert other["records"][0]["start_state"] != first["records"][0]["start_state"]


@pytest.mark.parametrize("override, message", [
    ("budget_env_steps=12", "must be a multiple of frameskip=5"),
    ("success_rule=sometimes", "success_rule must be one of"),
    ("policies=[{name: only, policy: scripted}]", "at least 2 policies"),
    ("policies=[{name: a, policy: random}, {name: a, policy: random}]", "unique string name, got 'a'"),
    ("policies=[{name: a, policy: scripted}, {name: b, policy: teleport}]", "policy 'b': unknown policy 'teleport'"),
    ("env.resolution=32", "probe dataset .* has resolution 16, but the env has 32"),
    ("probe.features=pixels", "probe.features must be one of"),
])
def test_bad_inputs_are_refused(wall_data, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        evaluate(r2s_config("oracle", wall_data, tmp_path, override))
    assert not (tmp_path / "results.json").exists()


def test_scripted_policy_needs_a_known_env_and_proprio(wall_env):
    pusht = make("wmplan/PushT-v0", frameskip=FRAMESKIP, resolution=RESOLUTION)
    episodes = sample_episodes(pusht, 1, seed=0)
    with pytest.raises(ValueError, match="no controller for PushTEnv"):
        build_policies({"s": {"policy": "scripted"}}, pusht, episodes, seed=0)
    wall_episodes = sample_episodes(wall_env, 1, seed=0)
    with pytest.raises(ValueError, match="noise must be >= 0"):
        build_policies({"s": {"policy": "scripted", "noise": -1}}, wall_env, wall_episodes, seed=0)
    blind = SimpleNamespace(uses_proprio=False)
    policies = build_policies({"s": {"policy": "scripted"}}, wall_env, wall_episodes, seed=0)
    with pytest.raises(ValueError, match="predicts no proprio, but a policy acts on proprio"):
        imagine(blind, policies, {}, 1, [0])


def test_command_line_prints_the_table_and_reports_errors_in_one_line(wall_data, tmp_path):
    args = [sys.executable, "-m", "wmplan.real_to_sim", "env=wall", f"env.resolution={RESOLUTION}",
            "world_model=oracle", f"data={wall_data}", f"out_dir={tmp_path}", "starts=2", "budget_env_steps=20",
            "probe.val_fraction=0.3"]
    ok = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "Spearman rho" in ok.stdout and "noise_2.0" in ok.stdout and (tmp_path / "results.json").is_file()
    bad = subprocess.run([*args, "success_rule=often"], capture_output=True, text=True, cwd=tmp_path)
    last_line = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and last_line.startswith("wmplan-real-to-sim: error: success_rule")
