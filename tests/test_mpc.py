"""The MPC harness on a tiny 2-D point GoalEnv: oracle vs random, budget, context, outputs."""

import json
import logging

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from wmplan.envs.base import GoalEnv
from wmplan.envs.wrappers import FrameSkip
from wmplan.planners import build_planner
from wmplan.planners.mpc import (episode_video, plan_horizons, run_mpc, sample_episodes, save_videos, summary_line,
                                 write_results)
from wmplan.planners.oracle import EnvDistance, OracleModel
from wmplan.video import upscale

SPEED = 0.05  # position change per env step at |action| = 1
FRAMESKIP = 5
CEM = {"name": "cem", "num_samples": 48, "topk": 6, "iterations": 6}


class PointEnv(GoalEnv):
    """A point in [-1, 1]^2 moved by ``SPEED * action``; success within 0.15 of the goal."""

    state_dim = proprio_dim = 2

    def __init__(self, resolution: int = 16):
        super().__init__(resolution)
        self.observation_space = gym.spaces.Dict(
            pixels=gym.spaces.Box(0, 255, (resolution, resolution, 3), np.uint8),
            proprio=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
        )
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.pos = np.zeros(2)

    def get_state(self):
        return self.pos.copy()

    def set_state(self, state):
        self.pos = self._check_state(state).copy()

    def sample_start_and_goal(self, rng):
        start = np.array([rng.uniform(-0.9, -0.5), rng.uniform(-0.5, 0.5)])
        goal = np.array([rng.uniform(0.3, 0.7), rng.uniform(-0.5, 0.5)])
        return start, goal

    def evaluate(self, state, goal_state):
        distance = float(np.linalg.norm(state - goal_state))
        return {"success": distance < 0.15, "distance": distance}

    def _apply_action(self, action):
        self.pos = np.clip(self.pos + SPEED * action, -1.0, 1.0)

    def _render(self):
        image = np.zeros((self.resolution, self.resolution, 3), np.uint8)
        row, col = ((self.pos[::-1] + 1) / 2 * (self.resolution - 1)).round().astype(int)
        image[row, col] = 255
        return image

    def _proprio(self):
        return self.pos.astype(np.float32)


def make_env():
    return FrameSkip(PointEnv(), FRAMESKIP)


def run(planner_cfg, episodes, env=None, **kw):
    env = env or make_env()
    oracle = OracleModel(env)
    kw = {"budget_env_steps": 50, "horizon": 4, "seed": 0, **kw}
    return run_mpc(env, build_planner(planner_cfg), EnvDistance(env), oracle.encode, oracle.make_rollout_fn, episodes, **kw)


@pytest.fixture(scope="module")
def episodes():
    return sample_episodes(make_env(), 4, seed=99)


@pytest.fixture(scope="module")
def oracle_records(episodes):
    return run(CEM, episodes, execute_k=2)


def test_oracle_reaches_the_goal_and_random_does_not(episodes, oracle_records):
    random_records = run({"name": "random"}, episodes, execute_k=2)
    assert all(r.success for r in oracle_records)
    assert sum(r.success_any for r in random_records) <= 1
    assert np.mean([r.distances[-1] for r in random_records]) > 5 * np.mean([r.distances[-1] for r in oracle_records])


def test_budget_is_spent_exactly_with_no_early_stop(oracle_records):
    """50 env steps = 10 planner steps = 5 replans of 2; the loop runs on after success."""
    for r in oracle_records:
        assert r.steps == 50 and len(r.successes) == 50
        assert len(r.actions) == 10 and len(r.frames) == 11
        assert len(r.plan_times) == 5 and all(t > 0 for t in r.plan_times)
        assert all(np.abs(a).max() <= 1 for a in r.actions)
    # the recorded distance is the real env's: replaying the executed actions reproduces it
    r = oracle_records[0]
    replay = PointEnv().simulate(r.start_state, np.concatenate(r.actions).reshape(-1, 2))
    assert np.linalg.norm(replay[-1] - r.goal_state) == pytest.approx(r.distances[-1])


def test_budget_that_does_not_divide_the_plan(episodes, caplog):
    """35 env steps = 7 planner steps; with execute_k=3 the last replan executes only 1."""
    with caplog.at_level(logging.INFO, logger="wmplan.planners.mpc"):
        records = run(CEM, episodes[:1], budget_env_steps=35, execute_k=3)
    assert records[0].steps == 35 and len(records[0].plan_times) == 3
    progress = [m for m in caplog.messages if m.startswith("replan ")]
    assert [m.split(" (")[0] for m in progress] == ["replan 1/3", "replan 2/3", "replan 3/3"]
    assert "35 env steps" in progress[-1] and f"{int(records[0].success)}/1 at the goal now" in progress[-1]
    with pytest.raises(ValueError, match="multiple of frameskip"):
        run(CEM, episodes[:1], budget_env_steps=12)
    with pytest.raises(ValueError, match="execute_k"):
        run(CEM, episodes[:1], execute_k=5)


def test_same_seed_same_episodes(episodes):
    a, b = (run(CEM, episodes[:2], budget_env_steps=20, execute_k=1) for _ in range(2))
    assert [r.distances for r in a] == [r.distances for r in b]


def test_context_history_and_warm_start(episodes):
    """Contexts hold the last 3 real observations and the actions between them; each replan is
    warm-started with the previous plan's unexecuted tail, padded with zeros."""
    env, seen = make_env(), []
    oracle = OracleModel(env)

    class Recording:
        def plan(self, rollout_fn, objective, goal, batch_size, horizon, action_dim, init=None, generator=None,
                 frameskip=1):
            plan = build_planner(CEM).plan(rollout_fn, objective, goal, batch_size, horizon, action_dim, init, generator)
            seen.append((rollout_fn.context, init, plan.actions))
            assert frameskip == env.action_space.shape[0] // env.unwrapped.action_space.shape[0]
            return plan

    def make_rollout_fn(context):
        fn = oracle.make_rollout_fn(context)
        fn.context = context
        return fn

    records = run_mpc(env, Recording(), EnvDistance(env), oracle.encode, make_rollout_fn, episodes[:2],
                      budget_env_steps=30, execute_k=1, horizon=3, history=3)
    assert len(seen) == 6
    ctx0, init0, _ = seen[0]
    assert ctx0["latents"].shape == (2, 3, 2, 1, 1) and ctx0["actions"].shape == (2, 2, 10)
    assert init0 is None and torch.equal(ctx0["actions"], torch.zeros(2, 2, 10))
    ctx3, init3, _ = seen[3]
    start = torch.tensor(np.stack([e[0] for e in episodes[:2]]))
    assert torch.allclose(ctx0["latents"][:, :, :, 0, 0], start[:, None].expand(2, 3, 2))
    executed = torch.tensor(np.stack([r.actions[:3] for r in records]))  # [B, 3, Aw]
    assert torch.allclose(ctx3["actions"], executed[:, 1:3])
    # the context states are the real states after planner steps 1, 2, 3
    real = [PointEnv().simulate(e[0], np.concatenate(r.actions[:3]).reshape(-1, 2))[FRAMESKIP::FRAMESKIP]
            for e, r in zip(episodes[:2], records)]
    assert torch.allclose(ctx3["latents"][:, :, :, 0, 0], torch.tensor(np.stack(real)))
    prev = seen[2][2]
    assert torch.equal(init3, torch.cat([prev[:, 1:], torch.zeros_like(prev[:, :1])], dim=1))
    # near the budget's end the plans stop at it (6 planner steps, one executed per replan)
    assert [plan.shape[1] for _, _, plan in seen] == [3, 3, 3, 3, 2, 1]
    prev, init4 = seen[3][2], seen[4][1]
    assert torch.equal(init4, prev[:, 1:3])


def test_plan_horizons():
    assert plan_horizons(10, 5, 5) == [5, 5]  # DINO-WM's whole-plan execution: unchanged
    assert plan_horizons(10, 2, 5) == [5, 5, 5, 4, 2]
    assert plan_horizons(7, 3, 4) == [4, 4, 1]
    assert plan_horizons(10, 2, 5, budget_horizon=False) == [5] * 5


def test_results_json_videos_and_summary(tmp_path, oracle_records):
    config = {"planner": CEM, "objective": "env_distance", "budget_env_steps": 50}
    results = write_results(tmp_path / "run" / "results.json", oracle_records, config, "ckpt.pt", "ab" * 32)
    loaded = json.loads((tmp_path / "run" / "results.json").read_text())
    assert loaded == json.loads(json.dumps(results))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["results.json"]  # no temp file left
    assert loaded["success_rate"] == 1.0 and loaded["episodes"] == 4 and loaded["replans"] == 5
    assert loaded["config"]["planner"]["num_samples"] == 48
    assert loaded["checkpoint"] == {"path": "ckpt.pt", "sha256": "ab" * 32}
    record = loaded["records"][0]
    assert {"success", "success_any", "final_distance", "min_distance", "steps", "plan_times"} <= record.keys()
    assert record["min_distance"] <= record["final_distance"] < 0.15

    paths = save_videos(oracle_records[:2], tmp_path / "videos", fmt="gif")
    frames = iio.imread(paths[0])
    assert len(paths) == 2 and paths[0].name.endswith("success.gif")
    # 16 px frames x16 = 256 px panels (4 px gaps) between a 24 px label bar and a 24 px caption bar
    assert frames.shape == (11, 24 + 256 + 24, 4 + 2 * 260, 3)  # executed | goal: no prediction recorded
    assert np.array_equal(frames[0, 24:280, 4:260], upscale(np.stack(oracle_records[0].frames[:1]), 256, 256)[0])
    assert np.array_equal(frames[0, 24:280, 264:520], upscale(oracle_records[0].goal_image[None], 256, 256)[0])
    line = summary_line(results, "point/oracle")
    assert line.startswith("point/oracle: success 1.00") and "4 episodes" in line


def test_pixel_oracle_predicts_the_real_frames(episodes):
    """render=True: predicted latents are exactly the frames the real env shows after those actions."""
    env = make_env()
    oracle = OracleModel(env, render=True)
    start = episodes[0][0]
    context = {"state": torch.tensor(start)[None, None]}  # [B=1, T=1, S]
    actions = torch.rand(1, 2, 3, 2 * FRAMESKIP, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pred = oracle.make_rollout_fn(context)(actions)["latents"]
    assert pred.shape == (1, 2, 3, 3, 16, 16)
    env.reset(options={"state": start})
    for a in actions[0, 1].numpy():
        obs, *_ = env.step(a)
    assert torch.equal(pred[0, 1, -1], oracle.encode({"pixels": obs["pixels"][None]})["latents"][0])


def test_episode_plan_is_the_same_alone_and_batched(episodes):
    """Per-episode randomness: an episode's executed actions do not depend on its batch."""
    batched = run(CEM, episodes, seed=5)
    for i in (0, 2):
        alone = run(CEM, [episodes[i]], seed=5, episode_ids=[i])[0]
        np.testing.assert_array_equal(np.stack(alone.actions), np.stack(batched[i].actions))
    shifted = run(CEM, episodes[1:3], seed=5, episode_ids=[1, 2])
    np.testing.assert_array_equal(np.stack(shifted[1].actions), np.stack(batched[2].actions))
    with pytest.raises(ValueError, match="episode_ids"):
        run(CEM, episodes, episode_ids=[0])


def test_world_model_gets_per_episode_seeds(episodes):
    """The context handed to make_rollout_fn carries one seed per episode, new each replan."""
    env = make_env()
    oracle = OracleModel(env)
    seen = []

    def make_rollout_fn(context):
        seen.append(context["seeds"].tolist())
        return oracle.make_rollout_fn(context)

    run_mpc(env, build_planner(CEM), EnvDistance(env), oracle.encode, make_rollout_fn, episodes[:2],
            budget_env_steps=40, horizon=4, seed=3, episode_ids=[7, 9])
    assert len(seen) == 2 and all(len(s) == 2 for s in seen)
    assert seen[0] != seen[1] and len(set(seen[0])) == 2
    again = []
    run_mpc(env, build_planner(CEM), EnvDistance(env), oracle.encode,
            lambda c: again.append(c["seeds"].tolist()) or oracle.make_rollout_fn(c), episodes[1:2],
            budget_env_steps=40, horizon=4, seed=3, episode_ids=[9])
    assert [s[0] for s in again] == [s[1] for s in seen]


def test_wilson_interval():
    from wmplan.planners.mpc import wilson_interval

    low, high = wilson_interval(48, 50)  # 0.96 over 50 episodes
    assert low == pytest.approx(0.865, abs=0.005) and high == pytest.approx(0.989, abs=0.005)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(47, 50)[0] < 0.96 < wilson_interval(47, 50)[1]  # 0.94 and 0.96 overlap


def render_states(env):
    """A "decoder" for the oracle's state latents [B, T, S, 1, 1]: the env's frames of those states."""
    def decode(latents):
        states = latents[..., 0, 0].numpy()
        return torch.from_numpy(np.stack([[env.unwrapped.render_state(x) for x in row] for row in states]))
    return decode


def test_predictions_are_recorded_for_watched_episodes_without_changing_results(episodes):
    """A perfect model's decoded predictions are the executed frames; recording them (for
    episode ids 1 and 3 only) leaves every executed action and distance as it was."""
    env = make_env()
    kw = {"budget_env_steps": 30, "execute_k": 2, "horizon": 4, "episode_ids": [0, 1, 3]}
    plain = run(CEM, episodes[:3], env=env, **kw)
    recorded = run(CEM, episodes[:3], env=env, decode_fn=render_states(env), predict_episodes={1, 3}, **kw)
    for a, b in zip(plain, recorded):
        np.testing.assert_array_equal(np.stack(a.actions), np.stack(b.actions))
        assert a.distances == b.distances and a.successes == b.successes
    assert [len(r.predicted_frames) for r in recorded] == [0, 6, 6]
    np.testing.assert_array_equal(np.stack(recorded[2].predicted_frames), np.stack(recorded[2].frames[1:]))


def test_episode_video_has_labelled_upscaled_panels(episodes):
    env = make_env()
    r = run(CEM, episodes[:1], env=env, budget_env_steps=20, execute_k=2, decode_fn=render_states(env),
            predict_episodes={0})[0]
    r.predicted_frames = [255 - f for f in r.predicted_frames]  # tell the panels apart
    video = episode_video(r)
    assert video.shape == (5, 24 + 256 + 24, 4 + 3 * 260, 3)  # executed | predicted | goal, 16 px x16
    panels = [video[:, 24:280, 4 + i * 260:260 + i * 260] for i in range(3)]
    np.testing.assert_array_equal(panels[0], upscale(np.stack(r.frames), 256, 256))
    np.testing.assert_array_equal(panels[1][1:], upscale(np.stack(r.predicted_frames), 256, 256))
    np.testing.assert_array_equal(panels[1][0], panels[0][0])  # the prediction starts from the real start
    np.testing.assert_array_equal(panels[2], upscale(np.stack([r.goal_image] * 5), 256, 256))
    labels = [video[0, :24, 4 + i * 260:260 + i * 260] for i in range(3)]
    assert all((label < 128).any() for label in labels) and not np.array_equal(labels[0], labels[1])
    captions = video[:, 280:]
    assert (captions < 128).any(axis=(1, 2, 3)).all() and not np.array_equal(captions[1], captions[2])
