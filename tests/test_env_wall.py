import numpy as np
import pytest

from wmplan.envs.wall import (
    DOOR_HALF_GAP,
    DOT_COLOR,
    WALL_COLOR,
    WALL_LEFT,
    WALL_RIGHT,
    WALL_X,
    WallEnv,
    move,
    room_of,
)


def run(env: WallEnv, start, actions) -> np.ndarray:
    """Positions [N + 1, 2] visited from ``start`` under ``actions`` [N, 2]."""
    return env.simulate(np.asarray(start, dtype=np.float64), np.asarray(actions, dtype=np.float64))[:, :2]


def test_free_motion_is_two_units_per_action():
    env = WallEnv()
    path = run(env, [10.0, 20.0, 30], [[0.5, -0.25], [1.0, 1.0]])
    np.testing.assert_allclose(path, [[10, 20], [11, 19.5], [13, 21.5]])


def test_wall_blocks_outside_the_door_and_lets_through_at_the_door():
    env = WallEnv(door_y=30)
    blocked = run(env, [20.0, 10.0, 30], [[1.0, 0.0]] * 20)
    assert blocked[:, 0].max() == WALL_LEFT  # stopped at the wall's face
    assert np.all(blocked[:, 1] == 10.0)
    through = run(env, [20.0, 30.0, 30], [[1.0, 0.0]] * 20)
    assert through[-1, 0] > WALL_RIGHT


def test_slides_along_the_wall():
    end = move(np.array([27.0, 10.0]), np.array([29.0, 12.0]), door_y=30)
    np.testing.assert_allclose(end, [WALL_LEFT, 12.0])
    # Moving up along the doorway's side face out of the door is blocked at the door's edge.
    end = move(np.array([32.0, 30.0]), np.array([32.0, 50.0]), door_y=30)
    np.testing.assert_allclose(end, [32.0, 30 + DOOR_HALF_GAP + 0.5])


def test_random_walks_never_enter_walls_and_cross_only_through_the_door():
    env = WallEnv(randomize_door=True, goal_level="hard")
    rng = np.random.default_rng(0)
    crossings = 0
    for episode in range(40):
        start, _ = env.sample_start_and_goal(rng)
        door = start[2]
        # Biased toward the wall so that many walks reach it.
        actions = rng.uniform(-1, 1, (150, 2)) + [0.6 if start[0] < WALL_X else -0.6, 0]
        path = run(env, start, np.clip(actions, -1, 1))
        for p in path:
            room_of(p, door)  # raises inside a wall
        in_wall_span = (path[:, 0] > WALL_LEFT) & (path[:, 0] < WALL_RIGHT)
        assert np.all(np.abs(path[in_wall_span, 1] - door) <= DOOR_HALF_GAP + 0.5)
        crossings += np.sign(path[0, 0] - WALL_X) != np.sign(path[-1, 0] - WALL_X)
    assert crossings >= 3  # the door is used


def test_success_rule():
    env = WallEnv()
    goal = np.array([45.0, 30.0, 30])
    assert env.evaluate(goal, goal) == {"success": True, "distance": 0.0}
    assert env.evaluate(goal + [4.4, 0, 0], goal)["success"]
    assert not env.evaluate(goal + [0, 4.6, 0], goal)["success"]
    far = env.evaluate(np.array([10.0, 30.0, 30]), goal)
    assert not far["success"] and far["distance"] == pytest.approx(35.0)


@pytest.mark.parametrize("level", ["easy", "hard"])
def test_start_and_goal_lie_on_opposite_sides(level):
    env = WallEnv(goal_level=level)
    rng = np.random.default_rng(1)
    pairs = [env.sample_start_and_goal(rng) for _ in range(200)]
    starts, goals = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    assert np.all((starts[:, 0] < WALL_X) != (goals[:, 0] < WALL_X))
    assert 0.3 < np.mean(starts[:, 0] < WALL_X) < 0.7  # swapped about half the time
    assert np.all(starts[:, 2] == 30) and np.all(goals[:, 2] == 30)
    gap_to_wall = np.minimum(np.abs(starts[:, 0] - WALL_LEFT), np.abs(starts[:, 0] - WALL_RIGHT))
    if level == "easy":  # within 1/4..3/4 of 25 steps of travel from the wall, near the door
        assert gap_to_wall.min() >= 6.25 and gap_to_wall.max() <= 18.75
        assert np.all(np.abs(starts[:, 1] - 30) <= 18.75)
    else:
        assert gap_to_wall.max() > 18.75


def test_random_door_is_shared_by_start_and_goal_and_drawn():
    env = WallEnv(randomize_door=True)
    rng = np.random.default_rng(2)
    pairs = [env.sample_start_and_goal(rng) for _ in range(50)]
    assert all(s[2] == g[2] for s, g in pairs)
    assert len({s[2] for s, _ in pairs}) > 5
    s, g = pairs[0]
    # The goal image shows the goal's own layout: same wall rows as the start image.
    wall = np.all(env.render_state(s) == WALL_COLOR, axis=-1)
    np.testing.assert_array_equal(wall, np.all(env.render_state(g) == WALL_COLOR, axis=-1))


@pytest.mark.parametrize("resolution", [65, 64, 224])
def test_render_shows_dot_and_walls_where_they_are(resolution):
    env = WallEnv(resolution=resolution, door_y=30)
    env.set_state(np.array([15.0, 40.0, 30]))
    image = env.render()
    assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
    to_px = lambda u: int((u + 0.5) * resolution / 65)  # noqa: E731 grid coordinate -> pixel
    red = image[..., 0].astype(int) - image[..., 1]
    row, col = np.unravel_index(red.argmax(), red.shape)
    assert abs(row - to_px(40)) <= 1 and abs(col - to_px(15)) <= 1
    assert red.max() >= 0.9 * (DOT_COLOR[0] - DOT_COLOR[1])
    assert np.all(image[to_px(10), to_px(WALL_X)] == WALL_COLOR)  # wall away from the door
    assert np.all(image[to_px(30), to_px(WALL_X)] == 0)  # the door is open
    assert np.all(image[to_px(20), to_px(50)] == 0)  # empty floor


def test_determinism_and_round_trip():
    a, b = WallEnv(), WallEnv()
    obs_a, _ = a.reset(seed=5)
    obs_b, _ = b.reset(seed=5)
    np.testing.assert_array_equal(obs_a["pixels"], obs_b["pixels"])
    for action in np.random.default_rng(0).uniform(-1, 1, (10, 2)):
        a.step(action)
    s = a.get_state()
    a.set_state(s)
    np.testing.assert_array_equal(a.get_state(), s)
    np.testing.assert_array_equal(a._proprio(), s[:2].astype(np.float32))


def test_bad_input_raises_clear_errors():
    env = WallEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="inside a wall"):
        env.set_state(np.array([WALL_X, 5.0, 30]))
    with pytest.raises(ValueError, match="door_y"):
        env.set_state(np.array([10.0, 10.0, 30.5]))
    with pytest.raises(ValueError, match="door_y"):
        WallEnv(door_y=2)
    with pytest.raises(ValueError, match="goal_level"):
        WallEnv(goal_level="medium")


def test_random_door_env_config_draws_a_door_per_episode():
    from wmplan.envs.config import load_env_config

    env = load_env_config("wall_random_door", resolution=16).make()
    doors = {float(env.reset(seed=seed)[1]["state"][2]) for seed in range(8)}
    assert len(doors) > 3
