from wmplan.envs.gl import configure_mujoco_gl

configure_mujoco_gl()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from wmplan.envs.deformable import (  # noqa: E402
    GRAIN_RADIUS,
    GOAL_SCALE,
    OBJECT_BOUND,
    WORKSPACE,
    GranularEnv,
    RopeEnv,
)

CLASSES = [RopeEnv, GranularEnv]


@pytest.fixture(scope="module", params=CLASSES, ids=lambda c: c.__name__)
def env(request):
    e = request.param()
    yield e
    e.close()


@pytest.fixture(scope="module")
def start_goal(env):
    return env.sample_start_and_goal(np.random.default_rng(7))


def test_spaces_and_state_dim(env):
    assert env.state_dim == env.model.nq + env.model.nv
    obs, info = env.reset(seed=0)
    assert obs["pixels"].shape == (64, 64, 3) and obs["pixels"].dtype == np.uint8
    assert obs["proprio"].shape == (2,) and info["state"].shape == (env.state_dim,)
    assert env.particle_positions(info["state"]).shape == (env.num_particles, 3)


def test_round_trip_and_replay_are_exact(env):
    env.reset(seed=1)
    env.step(np.array([-0.5, -0.5, 0.5, 0.5]))  # leaves motion and contacts in the state
    s0 = env.get_state()
    env.set_state(s0)
    np.testing.assert_array_equal(env.get_state(), s0)
    actions = np.array([[0.3, -0.8, -0.2, 0.6], [-0.6, 0.1, 0.7, 0.0]])
    stepped = [env.step(a)[4]["state"] for a in actions]
    np.testing.assert_array_equal(env.simulate(s0, actions)[1:], np.stack(stepped))


def test_reset_seed_is_deterministic(env):
    obs_a, info_a = env.reset(seed=3)
    obs_b, info_b = env.reset(seed=3)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
    assert not np.array_equal(env.reset(seed=4)[1]["state"], info_a["state"])


def test_push_across_moves_particles_and_a_miss_does_not(env, start_goal):
    start = start_goal[0]
    p = env.particle_positions(start)[:, :2]
    centre = p.mean(axis=0)
    # Across the rope's / pile's middle, perpendicular to its main axis.
    _, _, vt = np.linalg.svd(p - centre)
    normal = vt[1]
    cross = np.concatenate([centre - 0.12 * normal, centre + 0.12 * normal]) / WORKSPACE
    moved = env.particle_positions(env.simulate(start, cross[None])[-1])
    assert np.abs(moved - env.particle_positions(start)).max() > 0.02

    corners = WORKSPACE * np.array([[1, 1], [1, -1], [-1, 1], [-1, -1]])
    gaps = [np.linalg.norm(p - c, axis=1).min() for c in corners]
    corner = corners[int(np.argmax(gaps))]
    assert max(gaps) > 0.08  # precondition: this corner is clear of the objects
    miss = np.concatenate([corner, 0.8 * corner]) / WORKSPACE
    still = env.particle_positions(env.simulate(start, miss[None])[-1])
    assert np.abs(still - env.particle_positions(start)).max() < 1e-3


def test_goal_evaluation(env, start_goal):
    start, goal = start_goal
    assert env.evaluate(goal, goal) == {"success": True, "distance": 0.0}
    result = env.evaluate(start, goal)
    assert result["distance"] > env.success_threshold and not result["success"]
    env.reset(options={"state": start, "goal_state": goal})
    _, reward, terminated, _, info = env.step(np.zeros(4))
    assert reward == -info["distance"] and not terminated


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_goals_are_physical_transforms_of_the_start(env, seed):
    start, goal = env.sample_start_and_goal(np.random.default_rng(seed))
    s, g = env.particle_positions(start), env.particle_positions(goal)
    assert np.abs(g[:, :2]).max() <= OBJECT_BOUND + 0.01  # on the table
    assert np.ptp(g[:, 2]) < 1e-3  # settled flat: nothing stacked or bounced up
    ds = np.linalg.norm(s[:, None, :2] - s[None, :, :2], axis=-1)
    dg = np.linalg.norm(g[:, None, :2] - g[None, :, :2], axis=-1)
    if isinstance(env, RopeEnv):
        np.testing.assert_allclose(dg, ds, atol=2e-3)  # rigid: pairwise distances kept
    else:
        scale = np.median(dg[ds > 0] / ds[ds > 0])
        assert GOAL_SCALE[0] - 0.01 <= scale <= GOAL_SCALE[1] + 0.01
        assert dg[~np.eye(len(g), dtype=bool)].min() > 2 * GRAIN_RADIUS * 0.98  # no overlaps


def test_render_state_keeps_state(env, start_goal):
    start, goal = start_goal
    env.reset(options={"state": start})
    image = env.render_state(goal)
    np.testing.assert_array_equal(env.get_state(), start)
    assert image.shape == (64, 64, 3) and not np.array_equal(image, env.render())


def test_render_224():
    env = RopeEnv(resolution=224)
    obs, _ = env.reset(seed=0)
    assert obs["pixels"].shape == (224, 224, 3)
    # Rope (red), pusher (green) and table (beige) all show up.
    pixels = obs["pixels"].reshape(-1, 3).astype(int)
    assert (pixels[:, 0] - pixels[:, 1] > 100).any() and (pixels[:, 1] - pixels[:, 0] > 50).any()
    env.close()


def test_bad_input(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="state has shape"):
        env.set_state(np.zeros(3))
    with pytest.raises(ValueError, match="success_threshold"):
        type(env)(success_threshold=-1.0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_check_env(cls):
    env = cls()
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
