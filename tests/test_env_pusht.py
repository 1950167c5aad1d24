import numpy as np
import pytest
import torch

from wmplan.envs.pusht import (
    AGENT_COLOR,
    BACKGROUND,
    PLAN_BLOCK_WEIGHT,
    SUCCESS_ANGLE,
    SUCCESS_POSITION,
    T_FILL,
    WALL_HI,
    WALL_LO,
    T_OUTLINE,
    Pusher,
    PushTEnv,
    block_center,
    block_on_table,
    rotation,
)
from wmplan.planners.oracle import EnvDistance


def state(agent, block, angle=0.0, agent_velocity=(0.0, 0.0)) -> np.ndarray:
    return np.array([*agent, *block, angle, *agent_velocity, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def env():
    return PushTEnv()


def test_t_block_matches_dino_wm_geometry(env):
    env.set_state(state((100, 100), (256, 300)))
    assert env.block.mass == 1.0
    # Two boxes, 120 x 30 and 30 x 90: area 6300; centre of mass 45 px below the bar's top.
    assert sum(s.area for s in env.block_shapes) == pytest.approx(6300)
    np.testing.assert_allclose(block_center(env.get_state()), [256, 345])
    assert all(s.friction == 1.0 for s in env.block_shapes)


def test_pushing_moves_the_block_and_far_moves_do_not(env):
    # The agent left of the bar, pushing right: the block follows.
    s = state((170, 315), (256, 300))
    after = env.simulate(s, np.tile([0.5, 0.0], (10, 1)))[-1]
    assert after[2] - s[2] > 40
    assert after[0] > s[0] + 100
    # Moving away from the block leaves it exactly where it was.
    away = env.simulate(s, np.tile([-0.3, 0.0], (10, 1)))[-1]
    np.testing.assert_array_equal(away[2:5], s[2:5])


def test_pd_controller_tracks_relative_target(env):
    # PD control toward agent + 100 * action (k_p 100, k_v 20), ten 0.01 s substeps:
    # semi-implicit Euler, the velocity update first, then pymunk moves the agent.
    x, v = 100.0, 0.0
    for _ in range(10):
        v += 0.01 * (100 * (150.0 - x) - 20 * v)
        x += 0.01 * v
    after = env.simulate(state((100, 100), (400, 400)), [[0.5, 0.0]])[-1]
    assert after[0] == pytest.approx(x) and after[5] == pytest.approx(v)
    assert after[1] == 100 and after[6] == 0
    assert 10 < x - 100 < 20  # about a quarter of the way: the agent lags its target


def test_agent_stays_inside_the_walls(env):
    rng = np.random.default_rng(0)
    s = state((30, 30), (300, 300))
    path = env.simulate(s, np.clip(rng.normal(-0.5, 0.5, (100, 2)), -1, 1))
    assert path[:, :2].min() > WALL_LO and path[:, :2].max() < WALL_HI


def test_step_is_a_function_of_the_state(env):
    """``step`` from a restored state and ``simulate`` agree exactly, even in contact."""
    s = state((170, 315), (256, 300))
    actions = np.tile([0.5, 0.1], (6, 1))
    expected = env.simulate(s, actions)
    env.reset(options={"state": s})
    env.step(actions[0])
    env.step(actions[1])  # contact has built up solver state by now
    resumed = env.get_state()
    env.set_state(resumed)
    for a in actions[2:]:
        env.step(a)
    np.testing.assert_array_equal(env.get_state(), expected[-1])


def test_round_trip_is_exact(env):
    rng = np.random.default_rng(1)
    start, _ = env.sample_start_and_goal(rng)
    for s in env.simulate(start, rng.uniform(-1, 1, (30, 2))):
        env.set_state(s)
        np.testing.assert_array_equal(env.get_state(), s)


def test_success_rule(env):
    goal = state((200, 200), (300, 300), angle=1.0)
    assert env.evaluate(goal, goal) == {"success": True, "distance": 0.0}
    assert env.evaluate(goal + [15, 0, 0, 0, 0, 0, 0, 0, 0, 0], goal)["success"]
    assert not env.evaluate(goal + [15, 0, 15, 0, 0, 0, 0, 0, 0, 0], goal)["success"]  # 21.2 px
    assert not env.evaluate(goal + [0, 0, 0, 0, SUCCESS_ANGLE + 0.01, 0, 0, 0, 0, 0], goal)["success"]
    assert env.evaluate(goal + [0, 0, 0, 0, 2 * np.pi - 0.1, 0, 0, 0, 0, 0], goal)["success"]  # wrapped
    far = env.evaluate(state((50, 50), (100, 100)), goal)
    assert not far["success"] and far["distance"] > 200


def test_planning_cost_scales_each_success_error_by_its_threshold_and_weighs_the_block(env):
    goal = state((200, 200), (300, 300), angle=1.0)

    def cost(dx_agent=0.0, dx_block=0.0, turn=0.0):
        return env.planning_cost(goal + [dx_agent, 0, dx_block, 0, turn, 0, 0, 0, 0, 0], goal)

    assert cost() == 0.0
    assert cost(dx_agent=SUCCESS_POSITION) == pytest.approx(1.0)
    assert cost(dx_block=SUCCESS_POSITION) == pytest.approx(PLAN_BLOCK_WEIGHT)  # the block's errors count more
    assert cost(turn=SUCCESS_ANGLE) == pytest.approx(PLAN_BLOCK_WEIGHT)  # the angle counts, though `distance` does not
    assert cost(turn=2 * np.pi - SUCCESS_ANGLE) == pytest.approx(PLAN_BLOCK_WEIGHT)  # wrapped
    expected = np.hypot(12, PLAN_BLOCK_WEIGHT * 9) / 20 + PLAN_BLOCK_WEIGHT * 0.1 / SUCCESS_ANGLE
    assert cost(dx_agent=12, dx_block=9, turn=0.1) == pytest.approx(expected)


def test_oracle_cost_is_the_planning_cost_of_each_candidate_final_state(env):
    goal = state((200, 200), (300, 300), angle=1.0)
    finals = np.stack([goal, goal + [30, 0, 0, 0, 0, 0, 0, 0, 0, 0], goal + [0, 0, 0, 0, 0.5, 0, 0, 0, 0, 0]])
    path = np.stack([np.zeros_like(finals), finals], axis=1)  # [S=3, H=2, 10]: only the last state counts
    pred = {"latents": torch.from_numpy(path)[None, ..., None, None], "proprio": None}
    cost = EnvDistance(env)(pred, {"latents": torch.from_numpy(goal)[None, :, None, None]}, None)
    assert cost.shape == (1, 3)
    np.testing.assert_allclose(cost[0].numpy(), [env.planning_cost(f, goal) for f in finals])
    assert cost[0, 2] > 1  # turned past the success angle: costly, though its `distance` is 0


def test_pose_cost_is_the_planning_cost_on_pose_features_in_numpy_and_torch(env):
    rng = np.random.default_rng(3)
    starts, goals = map(np.stack, zip(*[env.sample_start_and_goal(rng) for _ in range(6)]))
    features, goal_features = env.pose_features(starts), env.pose_features(goals)  # [6, 6]
    assert features.shape == (6, 6)
    np.testing.assert_allclose(np.hypot(features[:, 4], features[:, 5]), 1.0)  # the angle as a unit vector
    expected = [env.planning_cost(s, g) for s, g in zip(starts, goals)]
    np.testing.assert_allclose(env.pose_cost(features, goal_features), expected, rtol=1e-9)
    # torch, with candidates broadcast against one goal; a probe's (cos, sin) need not be unit length
    scaled = torch.from_numpy(features)
    scaled[:, 4:] *= 0.3
    cost = env.pose_cost(scaled[None], torch.from_numpy(goal_features)[:, None])  # [goal 6, candidate 6]
    np.testing.assert_allclose(cost.diagonal().numpy(), expected, rtol=1e-9)
    # the angle wraps: -3.1 and 3.1 rad are 0.083 rad apart
    a, b = state((100, 100), (200, 200), angle=-3.1), state((100, 100), (200, 200), angle=3.1)
    assert env.planning_cost(a, b) == pytest.approx(PLAN_BLOCK_WEIGHT * (2 * np.pi - 6.2) / SUCCESS_ANGLE)
    with pytest.raises(ValueError, match=r"\[\.\.\., 10\]"):
        env.pose_features(np.zeros((3, 4)))


def test_sample_start_and_goal(env):
    starts, goals = zip(*[env.sample_start_and_goal(np.random.default_rng(i)) for i in range(12)])
    again = env.sample_start_and_goal(np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], starts[0])
    np.testing.assert_array_equal(again[1], goals[0])
    for s in starts:
        assert 50 <= s[0] <= 450 and 100 <= s[2] <= 400 and np.all(s[5:] == 0)
        assert block_on_table(s)
    moved = [np.linalg.norm(block_center(g) - block_center(s)) > 5 for s, g in zip(starts, goals)]
    assert np.mean(moved) >= 0.75  # the 25-step pusher goal moves the block


def test_pusher_moves_the_block_in_most_episodes_and_keeps_it_on_the_table(env):
    moved = 0
    for episode in range(10):
        rng = np.random.default_rng(episode)
        start, _ = env.sample_start_and_goal(rng)
        env.set_state(start)
        pusher = Pusher(rng, noise=0.2)
        for _ in range(60):
            env._apply_action(env._check_action(pusher(env.get_state())))
            s = env.get_state()
            corners = s[2:4] + T_OUTLINE @ rotation(s[4]).T
            assert corners.min() > WALL_LO - 2 and corners.max() < WALL_HI + 2  # not through a wall
        moved += np.linalg.norm(block_center(env.get_state()) - block_center(start)) > 5
    assert moved >= 8


@pytest.mark.parametrize("resolution", [64, 224])
def test_render_draws_agent_block_and_background(resolution):
    env = PushTEnv(resolution=resolution)
    s = state((100, 400), (300, 200))
    before = env.get_state()
    image = env.render_state(s)
    np.testing.assert_array_equal(env.get_state(), before)  # render_state restores the state
    assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
    px = lambda xy: tuple(int(v * resolution / 512) for v in xy[::-1])  # noqa: E731 world -> (row, col)
    assert np.abs(image[px((100, 400))].astype(int) - AGENT_COLOR).max() <= 10
    assert np.abs(image[px((300, 280))].astype(int) - T_FILL).max() <= 10  # in the stem
    assert np.all(image[px((100, 100))] == BACKGROUND)


def test_determinism_and_bad_actions():
    a, b = PushTEnv(), PushTEnv()
    obs_a, info_a = a.reset(seed=7)
    obs_b, info_b = b.reset(seed=7)
    np.testing.assert_array_equal(info_a["state"], info_b["state"])
    np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
    assert obs_a["proprio"].dtype == np.float32 and obs_a["proprio"].shape == (4,)
    np.testing.assert_array_equal(obs_a["proprio"], info_a["state"][[0, 1, 5, 6]].astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        a.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        a.step(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="state"):
        a.set_state(np.zeros(7))
    with pytest.raises(ValueError, match="noise"):
        Pusher(np.random.default_rng(0), noise=-1)
