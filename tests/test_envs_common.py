"""The GoalEnv contract, checked for every registered wmplan environment."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import wmplan.envs
from wmplan.envs.base import GoalEnv

ENV_IDS = sorted(wmplan.envs.ENV_IDS)


def make(env_id: str) -> GoalEnv:
    return gym.make(env_id).unwrapped


def random_actions(env: GoalEnv, n: int, seed: int) -> np.ndarray:
    env.action_space.seed(seed)
    return np.stack([env.action_space.sample() for _ in range(n)])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_passes_the_gymnasium_env_checker(env_id):
    check_env(make(env_id), skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_follow_the_contract(env_id):
    env = make(env_id)
    obs, info = env.reset(seed=0)
    assert env.observation_space["pixels"] == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.observation_space["proprio"].shape == (env.proprio_dim,)
    assert env.observation_space["proprio"].dtype == np.float32
    space = env.action_space
    assert space.dtype == np.float32 and len(space.shape) == 1
    assert np.all(space.low == -1) and np.all(space.high == 1)
    assert info["state"].shape == (env.state_dim,) and info["state"].dtype == np.float64
    assert obs in env.observation_space


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_seed_makes_episodes_repeat(env_id):
    runs = []
    for _ in range(2):
        env = make(env_id)
        obs, info = env.reset(seed=3)
        frames, states = [obs["pixels"]], [info["state"]]
        for a in random_actions(env, 4, seed=1):
            obs, _, _, _, info = env.step(a)
            frames.append(obs["pixels"])
            states.append(info["state"])
        runs.append((np.stack(frames), np.stack(states)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_state_round_trip_and_simulate_match_step(env_id):
    env = make(env_id)
    _, info = env.reset(seed=0)
    start, actions = info["state"], random_actions(env, 4, seed=2)
    stepped = [start]
    for a in actions:
        obs, _, _, _, info = env.step(a)
        stepped.append(info["state"])
    s = env.get_state()
    env.set_state(s)
    np.testing.assert_array_equal(env.get_state(), s)
    np.testing.assert_array_equal(env.render(), obs["pixels"])
    np.testing.assert_allclose(env.simulate(start, actions), np.stack(stepped), rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(env.get_state(), s)  # simulate keeps the current state


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_state_and_goal_api(env_id):
    env = make(env_id)
    env.reset(seed=1)
    start, goal = env.sample_start_and_goal(np.random.default_rng(0))
    current = env.get_state()
    goal_image = env.render_state(goal)
    np.testing.assert_array_equal(env.get_state(), current)
    assert goal_image.shape == (64, 64, 3) and goal_image.dtype == np.uint8
    assert not np.array_equal(goal_image, env.render_state(start))
    np.testing.assert_array_equal(env.render_state(current), env.render())
    at_goal = env.evaluate(goal, goal)
    assert at_goal["success"] is True or at_goal["success"] == np.True_
    assert at_goal["distance"] == pytest.approx(0.0, abs=1e-9)
    assert isinstance(env.evaluate(start, goal)["distance"], float)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sync_vector_env(env_id):
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(2)])
    obs, infos = envs.reset(seed=0)
    assert obs["pixels"].shape == (2, 64, 64, 3) and obs["pixels"].dtype == np.uint8
    assert not np.array_equal(obs["pixels"][0], obs["pixels"][1])  # seeds 0 and 1
    envs.action_space.seed(0)
    for _ in range(2):
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
    assert infos["state"].shape == (2, envs.envs[0].unwrapped.state_dim)
    assert rewards.shape == (2,)
    envs.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_async_vector_env_matches_sync(env_id):
    # "spawn": a forked worker hangs in EGL if this process already rendered with MuJoCo.
    fns = [lambda: wmplan.envs.make(env_id) for _ in range(2)]  # importable in a spawned worker
    results = []
    for envs in (gym.vector.SyncVectorEnv(fns), gym.vector.AsyncVectorEnv(fns, context="spawn")):
        obs, _ = envs.reset(seed=4)
        envs.action_space.seed(4)
        obs, _, _, _, infos = envs.step(envs.action_space.sample())
        results.append((obs["pixels"], infos["state"]))
        envs.close()
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
