import numpy as np
import pytest

from wmplan.data.policies import make_policy
from wmplan.envs.config import load_env_config
from wmplan.envs.pusht import block_center


def _env(name):
    return load_env_config(name, resolution=16).make()


def _rollout(env, policy, steps, seed=0):
    obs, info = env.reset(seed=seed)
    policy.reset(obs, info)
    states, actions = [info["state"]], []
    for _ in range(steps):
        action = policy(obs, info)
        obs, _, _, _, info = env.step(action)
        states.append(info["state"])
        actions.append(action)
    return np.array(states), np.array(actions)


def test_random_policy_is_uniform_over_the_box_and_seeded():
    env = _env("pusht")
    policy, twin = (make_policy("random", env, np.random.default_rng(0)) for _ in range(2))
    actions = np.array([policy(None, {}) for _ in range(4000)])
    assert actions.dtype == np.float32 and actions.shape == (4000, 2)
    assert actions.min() >= -1 and actions.max() <= 1
    np.testing.assert_allclose(actions.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(actions.std(0), 1 / np.sqrt(3), atol=0.03)  # std of U(-1, 1)
    np.testing.assert_array_equal(actions[:10], [twin(None, {}) for _ in range(10)])  # same seed, same actions


def test_pusher_moves_the_t_block_more_than_random_actions():
    env = _env("pusht")
    moved = {}
    for name in ("pusher", "random"):
        states, actions = _rollout(env, make_policy(name, env, np.random.default_rng(1)), steps=100)
        assert np.all(np.abs(actions) <= 1)
        centers = np.array([block_center(s) for s in states])
        moved[name] = np.linalg.norm(np.diff(centers, axis=0), axis=1).sum()  # path length in px
    assert moved["pusher"] > 50 and moved["pusher"] > 3 * moved["random"]


def test_waypoint_reaches_successive_random_cells():
    env = _env("pointmaze_umaze")
    policy = make_policy("waypoint", env, np.random.default_rng(2), noise=0.0)
    obs, info = env.reset(seed=2)
    policy.reset(obs, info)
    targets = [tuple(policy.target)]
    for _ in range(300):
        obs, _, _, _, info = env.step(policy(obs, info))
        if tuple(policy.target) != targets[-1]:
            targets.append(tuple(policy.target))
    assert len(targets) >= 3  # each target was reached, so a new one was drawn
    assert all(env.unwrapped.grid[int(i), int(j)] for i, j in targets)  # all free cells


def test_bad_policy_names_and_env_pairs_are_rejected():
    pusht, maze = _env("pusht"), _env("pointmaze_umaze")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown policy 'expert'"):
        make_policy("expert", pusht, rng)
    with pytest.raises(ValueError, match="'pusher' needs a PushTEnv, got PointMazeEnv"):
        make_policy("pusher", maze, rng)
    with pytest.raises(ValueError, match="'waypoint' needs a PointMazeEnv, got PushTEnv"):
        make_policy("waypoint", pusht, rng)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        make_policy("random", pusht, 0)
