import os
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces import Box, Dict

from wmplan.data.collect import collect
from wmplan.data.dataset import CACHE_DIR, ClipDataset, iter_episodes, load_dataset_info
from wmplan.envs.base import GoalEnv
from wmplan.envs.config import EnvConfig, load_env_config


class DotEnv(GoalEnv):
    """A point with known dynamics, state_{t+1} = state_t + 2 * a_t, drawn as a coded image."""

    state_dim = proprio_dim = 2

    def __init__(self, resolution: int = 16, render_mode: str | None = "rgb_array"):
        super().__init__(resolution, render_mode)
        r = self.resolution
        self.observation_space = Dict(
            pixels=Box(0, 255, (r, r, 3), np.uint8), proprio=Box(-np.inf, np.inf, (2,), np.float32)
        )
        self.action_space = Box(-1, 1, (2,), np.float32)
        self.pos = np.zeros(2)

    def get_state(self):
        return self.pos.copy()

    def set_state(self, state):
        self.pos = self._check_state(state).copy()

    def sample_start_and_goal(self, rng):
        return rng.uniform(-5, 5, 2), rng.uniform(-5, 5, 2)

    def evaluate(self, state, goal_state):
        d = float(np.linalg.norm(state - goal_state))
        return {"success": d < 1, "distance": d}

    def _apply_action(self, action):
        self.pos = self.pos + 2 * action

    def _render(self):
        image = np.zeros((self.resolution, self.resolution, 3), np.uint8)
        image[..., :2] = np.floor(self.pos * 7).astype(np.int64) % 256  # a different image per state
        return image

    def _proprio(self):
        return self.pos * 10


if "wmplan_test/Dot-v0" not in gym.registry:
    gym.register("wmplan_test/Dot-v0", entry_point=DotEnv)

DOT = EnvConfig(name="dot", id="wmplan_test/Dot-v0", frameskip=3, history=1, episode_length=12,
                dataset_episodes=6, policy="random", resolution=16)  # fmt: skip


@pytest.fixture(scope="module")
def dot_data(tmp_path_factory):
    return collect(DOT, 6, "random", 0, tmp_path_factory.mktemp("dot") / "data", shard_episodes=4, progress=False)


def test_clips_line_up_frames_with_the_actions_between_them(dot_data):
    env = DOT.make().unwrapped
    clips = ClipDataset(dot_data, num_frames=4, frameskip=3, split="train", val_fraction=0.3, seed=0)
    assert len(clips) == len(clips.episodes) * (12 - 3 * 3 + 1)
    for index in range(0, len(clips), 3):
        item = clips[index]
        assert item["pixels"].shape == (4, 16, 16, 3) and item["pixels"].dtype == np.uint8
        assert item["actions"].shape == (3, 6) and item["actions"].dtype == np.float32
        assert item["states"].shape == (4, 2) and item["proprio"].shape == (4, 2)
        moves = item["actions"].reshape(3, 3, 2).sum(1)  # each planner action's net push [3, 2]
        np.testing.assert_allclose(np.diff(item["states"], axis=0), 2 * moves, rtol=0, atol=1e-5)
        np.testing.assert_allclose(item["proprio"], 10 * item["states"], rtol=1e-6)
        for frame, state in zip(item["pixels"], item["states"]):
            np.testing.assert_array_equal(frame, env.render_state(state))


def test_clip_start_and_episode_match_the_stored_episode(dot_data):
    episodes = list(iter_episodes(dot_data))
    clips = ClipDataset(dot_data, num_frames=3, frameskip=2, split="val", val_fraction=0.3, seed=0)
    assert ClipDataset(dot_data, 1, 2)[0]["actions"].shape == (0, 4)  # single frames: no actions
    for index in (0, len(clips) - 1, -1):
        item = clips[index]
        ep, s = episodes[item["episode"]], item["start"]
        np.testing.assert_array_equal(item["states"], ep["states"][s : s + 5 : 2])
        np.testing.assert_array_equal(item["actions"], ep["actions"][s : s + 4].reshape(2, 4))
    with pytest.raises(IndexError):
        clips[len(clips)]


def test_split_is_by_episode_seeded_and_stable_as_the_dataset_grows(dot_data, tmp_path):
    def split(path, seed):
        return {s: set(ClipDataset(path, 2, 1, s, val_fraction=0.4, seed=seed).episodes) for s in ("train", "val")}

    a = split(dot_data, seed=0)
    assert a["train"] and a["val"] and not a["train"] & a["val"] and a["train"] | a["val"] == set(range(6))
    assert split(dot_data, seed=0) == a
    assert any(split(dot_data, seed) != a for seed in (1, 2, 3))
    bigger = collect(DOT, 12, "random", 0, tmp_path / "big", progress=False)
    b = split(bigger, seed=0)
    assert a["val"] == b["val"] & set(range(6)) and a["train"] == b["train"] & set(range(6))


def test_proprio_stats_are_over_train_episodes(dot_data):
    train = ClipDataset(dot_data, num_frames=2, frameskip=3, split="train", val_fraction=0.3, seed=0)
    val = ClipDataset(dot_data, num_frames=2, frameskip=3, split="val", val_fraction=0.3, seed=0)
    episodes = [ep for e, ep in enumerate(iter_episodes(dot_data)) if e in set(train.episodes)]
    proprio = np.concatenate([ep["proprio"] for ep in episodes])
    mean, std = train.proprio_stats()
    np.testing.assert_allclose(mean, proprio.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, proprio.std(0), rtol=1e-5)
    for a, b in zip(train.proprio_stats(), val.proprio_stats()):
        np.testing.assert_array_equal(a, b)


def test_max_train_episodes_keeps_the_first_train_episodes_and_the_val_split(dot_data):
    kw = dict(num_frames=2, frameskip=1, val_fraction=0.3, seed=0)
    full, val = ClipDataset(dot_data, split="train", **kw), ClipDataset(dot_data, split="val", **kw)
    small = ClipDataset(dot_data, split="train", max_train_episodes=2, **kw)
    assert list(small.episodes) == list(full.episodes[:2]) and len(small) < len(full)
    assert small[len(small) - 1]["episode"] == full.episodes[1]
    small_val = ClipDataset(dot_data, split="val", max_train_episodes=2, **kw)
    assert list(small_val.episodes) == list(val.episodes)
    with pytest.raises(ValueError, match="fewer than max_train_episodes=99"):
        ClipDataset(dot_data, split="train", max_train_episodes=99, **kw)
    with pytest.raises(ValueError, match="max_train_episodes must be a positive int"):
        ClipDataset(dot_data, split="train", max_train_episodes=0, **kw)


def test_cache_is_reused_rebuilt_when_stale_or_corrupt_and_pickles(tmp_path):
    path = collect(DOT, 3, "random", 0, tmp_path / "d", progress=False)
    first = ClipDataset(path, 3, 2, "train", val_fraction=0.0)
    frames = path / CACHE_DIR / "frames.npy"
    built = frames.stat().st_mtime_ns
    assert ClipDataset(path, 3, 2, "train", val_fraction=0.0)[5]["start"] == first[5]["start"]
    assert frames.stat().st_mtime_ns == built  # reused, not rebuilt

    clone = pickle.loads(pickle.dumps(first))  # what a DataLoader worker gets
    np.testing.assert_array_equal(clone[7]["pixels"], first[7]["pixels"])

    expected = first[len(first) - 1]
    with open(frames, "r+b") as f:  # damage: the file loses its tail
        f.truncate(os.path.getsize(frames) // 2)
    again = ClipDataset(path, 3, 2, "train", val_fraction=0.0)
    np.testing.assert_array_equal(again[len(again) - 1]["pixels"], expected["pixels"])

    collect(DOT, 5, "random", 0, path, progress=False)  # more episodes: the cache is stale
    assert len(ClipDataset(path, 3, 2, "train", val_fraction=0.0)) == 5 * (12 - 4 + 1)
    assert load_dataset_info(path)["num_episodes"] == 5


def test_bad_arguments_and_empty_splits_are_rejected(dot_data, tmp_path):
    with pytest.raises(ValueError, match="num_frames"):
        ClipDataset(dot_data, 0, 1)
    with pytest.raises(ValueError, match="frameskip"):
        ClipDataset(dot_data, 2, 1.5)
    with pytest.raises(ValueError, match="split"):
        ClipDataset(dot_data, 2, 1, split="test")
    with pytest.raises(ValueError, match="val_fraction"):
        ClipDataset(dot_data, 2, 1, val_fraction=1.0)
    with pytest.raises(ValueError, match="val split .* has no clips"):
        ClipDataset(dot_data, 2, 1, split="val", val_fraction=0.0)
    with pytest.raises(ValueError, match="train split .* has no clips"):
        ClipDataset(dot_data, 6, 3)  # clips of 15 env steps in 12-step episodes
    with pytest.raises(FileNotFoundError, match="no dataset directory"):
        ClipDataset(tmp_path / "missing", 2, 1)
    empty = collect(DOT, 0, "random", 0, tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="holds no episodes yet"):
        ClipDataset(empty, 2, 1)


def test_wall_clips_replay_exactly_under_the_true_dynamics(tmp_path):
    cfg = load_env_config("wall", resolution=16, episode_length=20)
    path = collect(cfg, 3, "random", 0, tmp_path / "wall", progress=False)
    env = cfg.make().unwrapped
    clips = ClipDataset(path, num_frames=3, frameskip=5, split="train", val_fraction=0.0)
    for index in range(0, len(clips), 4):
        item = clips[index]
        replay = env.simulate(item["states"][0], item["actions"].reshape(-1, 2))  # [11, S]
        np.testing.assert_allclose(replay[::5], item["states"], rtol=0, atol=1e-9)
        for frame, state in zip(item["pixels"], item["states"]):
            np.testing.assert_array_equal(frame, env.render_state(state))


def test_frame_stride_stores_only_the_trained_frames_and_serves_the_same_clips(dot_data, tmp_path):
    """frame_stride=3 (DOT's frameskip): a third of the frames on disk, and each clip, where one
    starts, equals the full-rate dataset's clip (pixels, actions, proprio, states)."""
    strided = collect(DOT, 6, "random", 0, tmp_path / "strided", shard_episodes=4, progress=False, frame_stride=3)
    assert load_dataset_info(strided)["frame_stride"] == 3
    full_episodes = list(iter_episodes(dot_data))
    for ep, full in zip(iter_episodes(strided), full_episodes, strict=True):
        np.testing.assert_array_equal(ep["pixels"], full["pixels"][::3])  # steps 0, 3, ..., 12
        for key in ("actions", "proprio", "states"):
            np.testing.assert_array_equal(ep[key], full[key])
    kw = dict(num_frames=3, frameskip=3, split="train", val_fraction=0.3, seed=0)
    clips, reference = ClipDataset(strided, **kw), ClipDataset(dot_data, **kw)
    assert list(clips.episodes) == list(reference.episodes)
    assert len(clips) == len(clips.episodes) * ((12 - 6) // 3 + 1)  # starts at env steps 0, 3, 6
    starts = {(int(reference[i]["episode"]), int(reference[i]["start"])): i for i in range(len(reference))}
    for item in (clips[i] for i in range(len(clips))):
        assert item["start"] % 3 == 0
        expected = reference[starts[(int(item["episode"]), int(item["start"]))]]
        for key in ("pixels", "actions", "proprio", "states"):
            np.testing.assert_array_equal(item[key], expected[key])
    assert len(ClipDataset(strided, 2, 6, val_fraction=0.0)) == 6 * ((12 - 6) // 3 + 1)  # any multiple of 3
    singles = ClipDataset(strided, 1, 1, val_fraction=0.0)  # every stored frame (latent caches, VAEs)
    assert len(singles) == 6 * 5 and {int(singles[i]["start"]) for i in range(5)} == {0, 3, 6, 9, 12}
    frames = np.load(strided / CACHE_DIR / "frames.npy", mmap_mode="r")
    assert len(frames) == 6 * 5 and len(np.load(dot_data / CACHE_DIR / "frames.npy", mmap_mode="r")) == 6 * 13
    with pytest.raises(ValueError, match="frame_stride 3.*frameskip must be a multiple of it, got 2"):
        ClipDataset(strided, 3, 2)
    info = strided / "wmplan.json"
    info.write_text(info.read_text().replace('"frame_stride": 3', '"frame_stride": 0'))
    with pytest.raises(ValueError, match="corrupt dataset .*frame_stride must be a positive int, got 0"):
        ClipDataset(strided, 3, 3)


def test_action_stats_are_over_the_train_episodes_actions(dot_data):
    train = ClipDataset(dot_data, num_frames=2, frameskip=3, split="train", val_fraction=0.3, seed=0)
    episodes = [ep for e, ep in enumerate(iter_episodes(dot_data)) if e in set(train.episodes)]
    actions = np.concatenate([ep["actions"] for ep in episodes])  # [12 per episode, 2]
    mean, std = train.action_stats()
    np.testing.assert_allclose(mean, actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, actions.std(0), rtol=1e-5)
    assert 0.4 < std.min() and std.max() < 0.7  # uniform random actions in [-1, 1]: std 0.58
