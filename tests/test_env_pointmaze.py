import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wmplan.envs.pointmaze import (
    BALL_RADIUS,
    MAX_SPEED,
    MAZES,
    PointMazeEnv,
    _wall_rectangles,
    cell_of,
    maze_grid,
    shortest_path,
)


def at(xy, v=(0.0, 0.0)) -> np.ndarray:
    return np.array([*xy, *v], dtype=np.float64)


def ball_pixel(image: np.ndarray) -> np.ndarray:
    """Centroid (row, col) of the red ball marker in an image."""
    r, g, b = (image[..., c].astype(int) for c in range(3))
    rows, cols = np.nonzero((r > 150) & (g < 100) & (b < 100))
    assert len(rows) > 0, "ball marker not visible"
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize(
    "maze, shape, n_free", [("umaze", (5, 5), 7), ("medium", (8, 8), 26), ("large", (9, 12), 46)]
)
def test_layouts_are_d4rl_and_connected(maze, shape, n_free):
    grid = maze_grid(maze)
    assert grid.shape == shape and grid.sum() == n_free
    assert not grid[[0, -1]].any() and not grid[:, [0, -1]].any()  # closed border
    first = tuple(np.argwhere(grid)[0])
    for cell in np.argwhere(grid):
        assert shortest_path(grid, first, tuple(cell))[-1] == tuple(cell)
    env = PointMazeEnv(maze)
    assert env.observation_space["pixels"].shape == (64, 64, 3)


def test_unknown_maze_and_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown maze"):
        PointMazeEnv("spiral")
    env = PointMazeEnv("umaze")
    env.reset(seed=0)
    for bad in ([0.1, 0.2, 0.3], [np.nan, 0.0], [[0.0, 0.0]]):
        with pytest.raises(ValueError, match="action"):
            env.step(np.array(bad))
    with pytest.raises(ValueError, match="state"):
        env.set_state(np.zeros(3))
    with pytest.raises(ValueError, match="not a free cell"):
        env.waypoint_action(at((1, 1)), np.array([2.0, 2.0]))  # (2, 2) is a wall


def test_wall_rectangles_cover_exactly_the_walls():
    for maze in MAZES:
        grid = maze_grid(maze)
        cover = np.zeros(grid.shape, dtype=int)
        for i0, j0, i1, j1 in _wall_rectangles(grid):
            cover[i0 : i1 + 1, j0 : j1 + 1] += 1
        np.testing.assert_array_equal(cover, (~grid).astype(int))


def test_success_rule_uses_xy_distance_under_half_a_unit():
    env = PointMazeEnv("umaze")
    goal = at((1.0, 1.0))
    assert env.evaluate(goal, goal) == {"success": True, "distance": 0.0}
    near = env.evaluate(at((1.3, 1.3), v=(4.0, -4.0)), goal)  # velocity is ignored
    assert near["success"] and near["distance"] == pytest.approx(0.3 * np.sqrt(2))
    assert not env.evaluate(at((1.0, 1.51)), goal)["success"]
    far = env.evaluate(at((3.0, 1.0)), goal)
    assert not far["success"] and far["distance"] == pytest.approx(2.0)


def test_start_and_goal_are_jittered_centres_of_distinct_free_cells():
    env = PointMazeEnv("medium")
    rng = np.random.default_rng(0)
    for _ in range(50):
        start, goal = env.sample_start_and_goal(rng)
        cells = [cell_of(s) for s in (start, goal)]
        assert cells[0] != cells[1] and all(env.grid[c] for c in cells)
        for s, c in zip((start, goal), cells):
            assert np.abs(s[:2] - c).max() <= 0.1 and np.all(s[2:] == 0)


def test_reset_seed_is_deterministic():
    env = PointMazeEnv("large")
    starts = [env.reset(seed=s)[1]["state"] for s in (7, 7, 8)]
    np.testing.assert_array_equal(starts[0], starts[1])
    assert not np.array_equal(starts[0], starts[2])


def test_state_round_trip_is_exact_through_wall_contacts():
    env = PointMazeEnv("umaze")
    rng = np.random.default_rng(0)
    for _ in range(40):  # random actions in a small maze: plenty of wall contacts
        start, _ = env.sample_start_and_goal(rng)
        actions = rng.uniform(-1, 1, size=(40, 2))
        states = env.simulate(start, actions)
        env.set_state(states[20])
        np.testing.assert_array_equal(env.get_state(), states[20])
        # Replaying from the middle must repeat the run bit for bit: no hidden solver state.
        np.testing.assert_array_equal(env.simulate(states[20], actions[20:]), states[20:])


@pytest.mark.parametrize("maze", ["umaze", "medium"])
def test_the_ball_cannot_pass_through_walls(maze):
    env = PointMazeEnv(maze)
    directions = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]
    for cell in np.argwhere(env.grid):
        for d in directions:
            path = env.simulate(at(cell), np.tile(d, (40, 1)))
            for x, y in path[:, :2]:
                i, j = cell_of((x, y))
                assert env.grid[i, j], f"ball entered wall cell {(i, j)} pushing {d} from {cell}"
                # MuJoCo's soft contacts let the sphere sink in a little (up to about half
                # its radius at full speed, as in D4RL), but its centre stays well clear.
                for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    if not env.grid[i + di, j + dj]:
                        assert 0.5 - (di * (x - i) + dj * (y - j)) > BALL_RADIUS / 4


def test_velocity_is_clipped_to_five():
    env = PointMazeEnv("large")
    states = env.simulate(at((1.0, 6.0)), np.tile([0.0, 1.0], (8, 1)))  # down a 5-cell corridor
    assert np.abs(states[:, 2:]).max() == MAX_SPEED
    assert states[-1, 3] == MAX_SPEED  # saturated, not merely passing through


@pytest.mark.parametrize("maze", list(MAZES))
def test_pixels_show_the_ball_where_it_is(maze):
    env = PointMazeEnv(maze, resolution=64)
    rows, cols = env.grid.shape
    extent = max(rows, cols)
    for cell in np.argwhere(env.grid)[::5]:
        image = env.render_state(at(cell + 0.2))
        expected = (cell + 0.2 - (np.array([rows, cols]) - 1) / 2) / extent * 64 + 32 - 0.5
        np.testing.assert_allclose(ball_pixel(image), expected, atol=1.0)


def test_pixels_change_when_the_ball_moves_and_render_state_keeps_state():
    env = PointMazeEnv("umaze", resolution=224)
    obs, info = env.reset(options={"state": at((3.0, 1.0))})
    assert obs["pixels"].shape == (224, 224, 3)
    for _ in range(5):
        moved, *_, moved_info = env.step(np.array([0.0, 1.0]))
    assert moved_info["state"][1] > 1.5
    assert ball_pixel(moved["pixels"])[1] > ball_pixel(obs["pixels"])[1] + 20  # moved right
    np.testing.assert_array_equal(env.render_state(moved_info["state"]), moved["pixels"])
    now = env.get_state()
    np.testing.assert_array_equal(env.render_state(info["state"]), obs["pixels"])
    np.testing.assert_array_equal(env.get_state(), now)
    env.close()
    assert env.render().shape == (224, 224, 3)  # a closed env re-creates its renderer


def test_shortest_path_is_4_connected_and_minimal():
    grid = maze_grid("umaze")
    path = shortest_path(grid, (1, 1), (3, 1))
    assert path == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    with pytest.raises(ValueError, match="not a free cell"):
        shortest_path(grid, (0, 0), (1, 1))


@pytest.mark.parametrize("maze", list(MAZES))
def test_waypoint_controller_reaches_far_goals(maze):
    env = PointMazeEnv(maze)
    rng = np.random.default_rng(1)
    for _ in range(3):
        start, goal = env.sample_start_and_goal(rng)
        budget = 6 * len(shortest_path(env.grid, cell_of(start), cell_of(goal))) + 10
        state = start
        for _ in range(budget):
            state = env.simulate(state, env.waypoint_action(state, goal[:2])[None])[-1]
            if env.evaluate(state, goal)["success"]:
                break
        assert env.evaluate(state, goal)["success"], f"did not reach {goal[:2]} from {start[:2]}"


def test_waypoint_controller_crosses_the_large_maze():
    env = PointMazeEnv("large")
    env.reset(options={"state": at((1.0, 1.0)), "goal_state": at((7.0, 10.0))})
    for t in range(200):
        action = env.waypoint_action(env.get_state(), np.array([7.0, 10.0]))
        assert action.shape == (2,) and np.all(np.abs(action) <= 1)
        if env.step(action)[2]:  # terminated on success
            break
    assert t < 199


def test_passes_the_gymnasium_env_checker():
    check_env(PointMazeEnv("umaze"), skip_render_check=True)


def test_planning_cost_is_the_distance_through_the_maze():
    """The oracle's cost: straight in the goal's cell, else along shortest cell paths, so a
    goal behind a wall is far even when it is close in a straight line."""
    env = PointMazeEnv(maze="umaze", resolution=16)
    goal = at((3.0, 1.0))
    assert env.planning_cost(at((3.2, 1.1)), goal) == pytest.approx(np.hypot(0.2, 0.1))
    # (1, 1) -> (3, 1) is 6 cell steps around the U-maze's inner wall, against 2 straight.
    assert env.planning_cost(at((1.0, 1.0)), goal) == pytest.approx(6.0)
    assert env.evaluate(at((1.0, 1.0)), goal)["distance"] == pytest.approx(2.0)
    # It falls monotonically along the path, and it is never below the straight distance.
    path = shortest_path(env.grid, (1, 1), (3, 1))
    costs = [env.planning_cost(at(c), goal) for c in path]
    assert costs == sorted(costs, reverse=True) and costs[-1] == 0
    rng = np.random.default_rng(0)
    for _ in range(50):
        s, g = env.sample_start_and_goal(rng)
        assert env.planning_cost(s, g) >= env.evaluate(s, g)["distance"] - 1e-9
