from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from wmplan.data.latent_cache import LatentCache, LatentClipDataset, all_frames, open_latent_cache
from wmplan.models.codecs import CodecConfig, build_codec


class FakeClips(Dataset):
    """The public API of wmplan.data.dataset.ClipDataset over episodes stored in
    `path/episodes.npz`: odd episodes are the validation split unless val_fraction is 0."""

    def __init__(self, path, num_frames, frameskip, split="train", val_fraction=0.1, seed=0):
        self.path, self.frameskip = path, frameskip
        data = np.load(Path(path) / "episodes.npz")
        self.episodes = [data[k] for k in sorted(data.files)]  # each uint8 [L, H, W, 3]
        span = (num_frames - 1) * frameskip
        self.index = [
            (e, s)
            for e, ep in enumerate(self.episodes)
            if (e % 2 == 1 and val_fraction > 0) == (split == "val")
            for s in range(len(ep) - span)
        ]
        self.num_frames = num_frames

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        e, s = self.index[i]
        pixels = self.episodes[e][s : s + self.num_frames * self.frameskip : self.frameskip]
        return {"pixels": torch.from_numpy(pixels), "episode": e, "start": s}


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    episodes = {f"ep{i}": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) for i, n in enumerate([9, 6, 11])}
    np.savez(tmp_path / "episodes.npz", **episodes)
    return tmp_path


def _codec(pixel_size=4):
    return build_codec(CodecConfig(name="pixels", image_size=16, pixel_size=pixel_size, chunk_size=5))


def test_items_carry_the_latents_of_their_frames(dataset):
    codec = _codec()
    clips = FakeClips(dataset, num_frames=3, frameskip=2, split="train")
    latent_clips = LatentClipDataset(clips, codec, batch_size=7)
    assert len(latent_clips) == len(clips)
    for i in (0, len(clips) - 1):
        item = latent_clips[i]
        assert "pixels" not in item and item["latents"].dtype == torch.float32
        expected = codec.encode(clips[i]["pixels"][None])[0]  # [3, 3, 4, 4]
        torch.testing.assert_close(item["latents"], expected, atol=2e-3, rtol=0)  # float16 storage
    val_item = LatentClipDataset(FakeClips(dataset, 3, 2, split="val"), codec, keep_pixels=True)[0]
    assert val_item["pixels"].shape == (3, 16, 16, 3) and val_item["latents"].shape == (3, 3, 4, 4)


def test_cache_is_built_once_and_shared_by_splits(dataset):
    codec = _codec()
    LatentClipDataset(FakeClips(dataset, 2, 1, split="train"), codec)
    LatentClipDataset(FakeClips(dataset, 4, 3, split="val"), codec)
    folders = list((dataset / "latents").iterdir())
    assert len(folders) == 1  # no leftover temporary folders either
    cache = LatentCache(folders[0])
    assert cache.meta["frames"] == 9 + 6 + 11 and cache.latents.dtype == np.float16


def test_other_codec_or_changed_data_gets_its_own_cache(dataset):
    clips = FakeClips(dataset, 2, 1)
    LatentClipDataset(clips, _codec(4))
    LatentClipDataset(clips, _codec(8))
    assert len(list((dataset / "latents").iterdir())) == 2
    data = dict(np.load(dataset / "episodes.npz"))
    data["ep0"] = 255 - data["ep0"]  # re-collected data, same shape
    np.savez(dataset / "episodes.npz", **data)
    item = LatentClipDataset(FakeClips(dataset, 2, 1), _codec(4))[0]
    assert len(list((dataset / "latents").iterdir())) == 3
    torch.testing.assert_close(item["latents"], _codec(4).encode(torch.from_numpy(data["ep0"][None, :2]))[0], atol=2e-3, rtol=0)


def test_missing_frame_and_corrupt_cache_are_errors(tmp_path):
    codec = _codec()
    frames = [{"pixels": torch.zeros(1, 16, 16, 3, dtype=torch.uint8), "episode": 0, "start": s} for s in range(3)]
    cache = open_latent_cache(frames, codec, tmp_path / "cache")
    np.testing.assert_array_equal(cache.rows(0, np.array([2, 0])), [2, 0])
    with pytest.raises(KeyError, match="episode 0, step 3"):
        cache.rows(0, np.array([1, 3]))
    folder = next((tmp_path / "cache").iterdir())
    (folder / "keys.npy").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="unreadable"):
        LatentCache(folder)


def test_real_clip_dataset(tmp_path):
    from wmplan.data.collect import collect
    from wmplan.data.dataset import ClipDataset
    from wmplan.envs.config import load_env_config

    path = collect(load_env_config("wall"), episodes=4, policy="random", seed=0, out_dir=tmp_path / "wall", progress=False)
    codec = build_codec(CodecConfig(name="pixels", image_size=64, pixel_size=16))
    for split, keep in (("train", False), ("val", True)):
        clips = ClipDataset(path, num_frames=4, frameskip=5, split=split, val_fraction=0.25)
        latent_clips = LatentClipDataset(clips, codec, keep_pixels=keep)
        item, pixels = latent_clips[len(clips) - 1], clips[len(clips) - 1]["pixels"]
        assert ("pixels" in item) == keep and item["actions"].shape == (3, 10)
        torch.testing.assert_close(item["latents"], codec.encode(torch.from_numpy(pixels)[None])[0], atol=2e-3, rtol=0)
    assert len(list((Path(path) / "latents").iterdir())) == 1


KILL_DURING_BUILD = """
import os, signal, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from test_latent_cache import FakeClips, _codec
from wmplan.data.latent_cache import LatentClipDataset

codec, calls = _codec(), []
encode = codec.encode
def encode_then_die(frames):
    calls.append(1)
    if len(calls) == 3:  # two batches are on disk
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(frames)
codec.encode = encode_then_die
LatentClipDataset(FakeClips(sys.argv[1], 2, 1), codec, batch_size=4)
"""


def test_a_killed_cache_build_resumes_where_it_stopped(dataset, tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", KILL_DURING_BUILD, str(dataset), str(Path(__file__).parent)],
                         capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    partial = [p for p in (dataset / "latents").iterdir() if p.name.startswith(".partial-")]
    assert len(partial) == 1 and not [p for p in (dataset / "latents").iterdir() if not p.name.startswith(".")]
    codec, calls = _codec(), []
    encode = codec.encode
    codec.encode = lambda frames: calls.append(1) or encode(frames)
    resumed = LatentClipDataset(FakeClips(dataset, 2, 1), codec, batch_size=4).cache
    assert len(calls) == -(-26 // 4) - 2  # only the batches the killed build had not finished
    assert sorted(p.name for p in (dataset / "latents").iterdir()) == [resumed.folder.name]
    clean = open_latent_cache(all_frames(FakeClips(dataset, 2, 1)), _codec(), tmp_path / "clean", batch_size=4)
    np.testing.assert_array_equal(np.asarray(resumed.latents), np.asarray(clean.latents))
    np.testing.assert_array_equal(np.load(resumed.folder / "keys.npy"), np.load(clean.folder / "keys.npy"))
