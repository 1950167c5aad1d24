from wmplan.envs.gl import configure_mujoco_gl

configure_mujoco_gl()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

from wmplan.envs.chamfer import chamfer_distance  # noqa: E402
from wmplan.envs.deformable import (  # noqa: E402
    GRAIN_RADIUS,
    GOAL_SCALE,
    OBJECT_BOUND,
    POSE_GRID,
    ROPE_RADIUS,
    SEGMENT_LENGTH,
    TABLE_HALF,
    WORKSPACE,
    GranularEnv,
    RopeEnv,
)

CLASSES = [RopeEnv, GranularEnv]


def pushes_through(env, state, rng, n):
    """``n`` actions [n, 4], each from 8 cm before a random particle of ``state`` through it,
    ending 10-30 cm past it (the far ones clipped at the workspace edge, near the walls)."""
    particles = env.particle_positions(state)[:, :2]
    actions = []
    for centre in particles[rng.integers(len(particles), size=n)]:
        angle = rng.uniform(0, 2 * np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        push = np.concatenate([centre - 0.08 * direction, centre + rng.uniform(0.1, 0.3) * direction])
        actions.append(np.clip(push / WORKSPACE, -1, 1))
    return np.array(actions)


def mixed_pushes(env, state, seed, n):
    """``n`` actions alternating uniform random ones (DINO-WM's data) and pushes through the objects."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(n, 4))
    actions[::2] = pushes_through(env, state, rng, len(actions[::2]))
    return actions


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
    _, info = env.reset(seed=1)
    first, *actions = pushes_through(env, info["state"], np.random.default_rng(1), 5)
    env.step(first)  # leaves motion, contacts and bodies MuJoCo has put to sleep in the simulator
    s0 = env.get_state()
    # Stepped on from there, without a set_state in between: simulate from the stored
    # state must replay the states and, rendered, the frames exactly.
    steps = [env.step(a) for a in actions]
    replay = env.simulate(s0, np.array(actions))
    np.testing.assert_array_equal(replay[1:], np.stack([step_info["state"] for *_, step_info in steps]))
    for (obs, *_), state in zip(steps, replay[1:]):
        np.testing.assert_array_equal(env.render_state(state), obs["pixels"])
    env.set_state(s0)
    np.testing.assert_array_equal(env.get_state(), s0)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_same_seed_and_actions_give_identical_states_and_frames(cls):
    def run(env):
        _, reset_info = env.reset(seed=5)
        steps = [env.step(a) for a in mixed_pushes(env, reset_info["state"], 5, 6)]
        return [step_info["state"] for *_, step_info in steps], [obs["pixels"] for obs, *_ in steps]

    fresh, used = cls(), cls()
    used.reset(seed=2)
    for a in mixed_pushes(used, used.get_state(), 2, 4):  # a history the second run must not see
        used.step(a)
    (states_a, frames_a), (states_b, frames_b) = run(fresh), run(used)
    np.testing.assert_array_equal(np.stack(states_a), np.stack(states_b))
    np.testing.assert_array_equal(np.stack(frames_a), np.stack(frames_b))
    assert not np.array_equal(states_a[0], states_a[-1])  # the pushes did move things
    fresh.close()
    used.close()


def test_objects_stay_on_the_table_and_the_rope_in_one_piece(env):
    """Many pushes, half of them through the objects and on towards the walls."""
    radius = ROPE_RADIUS if isinstance(env, RopeEnv) else GRAIN_RADIUS
    env.reset(seed=11)
    for k in range(8):  # new targets every 5 pushes, as the objects spread
        for a in mixed_pushes(env, env.get_state(), k, 5):
            env.step(a)
            p = env.particle_positions(env.get_state())
            assert np.all(np.abs(p[:, :2]) < TABLE_HALF - 0.9 * radius)  # inside the walls
            assert 0.8 * radius < p[:, 2].min() and p[:, 2].max() < 3 * radius  # on the table
            if isinstance(env, RopeEnv):
                links = np.linalg.norm(np.diff(p, axis=0), axis=1)
                assert np.all(np.abs(links / SEGMENT_LENGTH - 1) < 0.5)  # connected


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
    # A zero-length push, even on top of the objects, is no push (the `noop` baseline's action).
    on_top = np.concatenate([centre, centre]) / WORKSPACE
    np.testing.assert_array_equal(env.simulate(start, on_top[None])[-1], start)


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


def test_pose_features_are_the_layout_on_the_grid(env, start_goal):
    start, goal = start_goal
    cells = POSE_GRID**2
    features = env.pose_features(np.stack([start, goal]))
    assert features.shape == (2, 2 * cells)
    np.testing.assert_allclose(features[:, :cells].sum(-1), 1.0)  # occupancy shares
    assert (features[:, :cells] >= 0).all()
    # Each cell's distance field value is its centre's distance to the nearest particle.
    centres = (np.arange(POSE_GRID) + 0.5) / POSE_GRID * 2 * TABLE_HALF - TABLE_HALF
    row, col = 3, 11
    nearest = np.linalg.norm(env.particle_positions(start)[:, :2] - [centres[col], centres[row]], axis=-1).min()
    assert features[0, cells + row * POSE_GRID + col] == pytest.approx(nearest)
    # The occupancy's centre of mass is the particles' (bilinear shares keep the mean exactly).
    occupancy = features[0, :cells].reshape(POSE_GRID, POSE_GRID)
    mean_xy = [(occupancy.sum(0) * centres).sum(), (occupancy.sum(1) * centres).sum()]
    np.testing.assert_allclose(mean_xy, env.particle_positions(start)[:, :2].mean(0), atol=1e-9)
    np.testing.assert_array_equal(env.pose_features(start), features[0])  # one state, no batch axis
    with pytest.raises(ValueError, match="states must be"):
        env.pose_features(np.zeros(5))
    with pytest.raises(ValueError, match="pose features must be"):
        env.pose_cost(features[:, :10], features)
    with pytest.raises(ValueError, match="goal pose features must be"):
        env.pose_cost(features, features[:, :10])


def test_pose_cost_ranks_states_as_the_chamfer_distance_does(env, start_goal):
    """The planning cost on the grid follows the true Chamfer distance to the goal, from
    numpy and torch alike, and ignores a probe's negative or unnormalised occupancy."""
    import torch
    from scipy.stats import spearmanr

    start, goal = start_goal
    states = env.simulate(start, mixed_pushes(env, start, 0, 12))  # [13, state_dim]
    features, goal_features = env.pose_features(states), env.pose_features(goal)
    cost = env.pose_cost(features, goal_features)
    true = [chamfer_distance(env.particle_positions(s), env.particle_positions(goal)) for s in states]
    assert spearmanr(cost, true)[0] > 0.8
    torch.testing.assert_close(env.pose_cost(torch.from_numpy(features), torch.from_numpy(goal_features)),
                               torch.from_numpy(cost))
    noisy = features.copy()
    noisy[:, : POSE_GRID**2] *= 3.0
    noisy[:, 0] = -0.5  # a probe's negative share counts as none
    np.testing.assert_allclose(env.pose_cost(noisy, goal_features), env.pose_cost(np.where(
        np.arange(noisy.shape[1]) == 0, 0.0, features), goal_features), rtol=1e-6)


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
