import numpy as np
import pytest

import wmplan.envs
from wmplan.envs.wall import WallEnv
from wmplan.envs.wrappers import FrameSkip


def test_action_space_stacks_k_env_actions():
    env = FrameSkip(WallEnv(), 5)
    assert env.action_space.shape == (10,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    assert env.observation_space == env.env.observation_space


def test_step_runs_k_inner_steps_in_order():
    env = FrameSkip(WallEnv(), 3)
    obs, info = env.reset(seed=0)
    actions = np.array([[1.0, 0.0], [0.0, 1.0], [-0.5, -0.5]])
    expected = env.unwrapped.simulate(info["state"], actions)[1:]  # [3, S]
    obs, reward, terminated, truncated, info = env.step(actions.reshape(-1))
    np.testing.assert_array_equal(info["states"], expected)
    np.testing.assert_array_equal(info["state"], expected[-1])
    np.testing.assert_array_equal(obs["pixels"], env.unwrapped.render_state(expected[-1]))
    assert reward == 0.0 and not terminated and not truncated


def test_reward_is_summed_and_termination_stops_early():
    env = FrameSkip(WallEnv(), 5)
    start = np.array([10.0, 30.0, 30])
    goal = np.array([20.0, 30.0, 30])  # action (1, 0) moves 2 per step: distance 10, 8, 6, 4
    env.reset(options={"state": start, "goal_state": goal})
    _, reward, terminated, _, info = env.step(np.tile([1.0, 0.0], 5))
    assert terminated and info["success"]
    assert info["states"].shape == (3, 3)  # 4 < 4.5 after the third inner step
    assert reward == pytest.approx(-(8.0 + 6.0 + 4.0))


def test_truncation_stops_early_through_make():
    env = wmplan.envs.make("wmplan/Wall-v0", frameskip=5, max_episode_steps=7)
    assert isinstance(env, FrameSkip) and env.action_space.shape == (10,)
    env.reset(seed=1)
    _, _, _, truncated, info = env.step(np.zeros(10))
    assert not truncated and info["states"].shape == (5, 3)
    _, _, _, truncated, info = env.step(np.zeros(10))
    assert truncated and info["states"].shape == (2, 3)


def test_bad_actions_and_k_raise_clear_errors():
    env = FrameSkip(WallEnv(), 5)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\), expected \(10,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.r_[np.zeros(9), np.nan])
    with pytest.raises(ValueError, match="positive integer"):
        FrameSkip(WallEnv(), 0)
    with pytest.raises(ValueError, match="positive integer"):
        FrameSkip(WallEnv(), 2.5)
