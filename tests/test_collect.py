import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import minari
import numpy as np
import pytest
import yaml

import wmplan.data.collect as collect_module
from wmplan.config_dir import CONFIG_DIR
from wmplan.data.collect import collect, main
from wmplan.data.dataset import INFO_FILE, SHARD_DIR, iter_episodes, load_dataset_info
from wmplan.envs.config import EnvConfig, load_env_config

CFG = load_env_config("pusht", resolution=16, episode_length=8)


def _episodes(path):
    return list(iter_episodes(path))


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Five episodes collected in one uninterrupted run."""
    path = collect(CFG, 5, "pusher", 7, tmp_path_factory.mktemp("full") / "d", shard_episodes=2, progress=False)
    return _episodes(path)


def test_episodes_and_metadata_are_stored(full, tmp_path):
    path = collect(CFG, 2, "pusher", 7, tmp_path / "d", progress=False)
    info = load_dataset_info(path)
    expected = {"env_id": "wmplan/PushT-v0", "env_version": 0, "resolution": 16, "frameskip": 5, "history": 3,
                "episode_length": 8, "policy": "pusher", "seed": 7, "num_episodes": 2, "num_steps": 16}  # fmt: skip
    assert {k: info[k] for k in expected} == expected and info["wmplan_version"]
    ep = full[0]
    assert ep["pixels"].shape == (9, 16, 16, 3) and ep["pixels"].dtype == np.uint8
    assert ep["actions"].shape == (8, 2) and ep["states"].shape == (9, 10)
    assert not np.array_equal(full[0]["states"], full[1]["states"])  # episodes differ
    # Each shard is a plain Minari dataset carrying wmplan's metadata.
    shard = minari.MinariDataset(next((path / SHARD_DIR).iterdir()))
    assert shard.total_episodes == 2 and shard.storage.metadata["wmplan"]["seed"] == 7
    np.testing.assert_array_equal(shard[1].observations["pixels"], full[1]["pixels"])


def test_resumed_run_equals_uninterrupted_run(full, tmp_path):
    collect(CFG, 2, "pusher", 7, tmp_path / "d", shard_episodes=2, progress=False)
    collect(CFG, 5, "pusher", 7, tmp_path / "d", shard_episodes=3, progress=False)  # other shard sizes
    _assert_same(_episodes(tmp_path / "d"), full)
    collect(CFG, 3, "pusher", 7, tmp_path / "d", progress=False)  # asking for fewer changes nothing
    assert load_dataset_info(tmp_path / "d")["num_episodes"] == 5


def test_an_error_mid_episode_keeps_finished_episodes_and_resume_completes(full, tmp_path, monkeypatch):
    real_make_policy, calls = collect_module.make_policy, [0]

    class Crashing:  # the real policy, until the fifth step of episode 3
        def __init__(self, inner):
            self.inner = inner

        def reset(self, obs, info):
            self.inner.reset(obs, info)

        def __call__(self, obs, info):
            calls[0] += 1
            if calls[0] == 3 * 8 + 5:
                raise RuntimeError("policy crashed")
            return self.inner(obs, info)

    def failing_make_policy(name, env, rng):
        return Crashing(real_make_policy(name, env, rng))

    monkeypatch.setattr(collect_module, "make_policy", failing_make_policy)
    with pytest.raises(RuntimeError, match="policy crashed"):
        collect(CFG, 5, "pusher", 7, tmp_path / "d", shard_episodes=32, progress=False)
    assert load_dataset_info(tmp_path / "d")["num_episodes"] == 3
    _assert_same(_episodes(tmp_path / "d"), full[:3])
    monkeypatch.undo()
    collect(CFG, 5, "pusher", 7, tmp_path / "d", progress=False)
    _assert_same(_episodes(tmp_path / "d"), full)


def test_a_hard_kill_loses_only_the_uncommitted_shard(full, tmp_path):
    out = tmp_path / "d"
    code = (
        "from wmplan.data.collect import collect; from wmplan.envs.config import EnvConfig, load_env_config; "
        "collect(load_env_config('pusht', resolution=16, episode_length=8), 10**6, 'pusher', 7, "
        f"{str(out)!r}, shard_episodes=1, progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while len(list((out / SHARD_DIR).glob("0*"))) < 3 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = load_dataset_info(out)["num_episodes"]
    assert done >= 3
    n = min(done, 5)
    _assert_same(_episodes(out)[:n], full[:n])
    collect(CFG, done + 1, "pusher", 7, out, progress=False)  # resumes after whatever the kill left
    assert load_dataset_info(out)["num_episodes"] == done + 1


def test_leftover_temporaries_of_a_killed_run_are_discarded(full, tmp_path):
    out = collect(CFG, 2, "pusher", 7, tmp_path / "d", progress=False)
    junk = out / SHARD_DIR / ".00000002-00000004.tmp"
    junk.mkdir()
    (junk / "main_data.hdf5").write_bytes(b"half written")
    collect(CFG, 5, "pusher", 7, out, progress=False)
    assert not junk.exists()
    _assert_same(_episodes(out), full)


def test_foreign_corrupt_and_mismatched_datasets_give_clear_errors(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a wmplan dataset; refusing"):
        collect(CFG, 1, "pusher", 7, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = collect(CFG, 3, "pusher", 7, tmp_path / "d", shard_episodes=1, progress=False)
    with pytest.raises(ValueError, match="other settings .*seed: 7 on disk vs 8 now"):
        collect(CFG, 4, "pusher", 8, out, progress=False)
    with pytest.raises(ValueError, match="not a wmplan dataset"):
        load_dataset_info(out / SHARD_DIR / "00000000-00000001")  # a bare Minari dataset

    (out / SHARD_DIR / "00000001-00000002" / "main_data.hdf5").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="corrupt shard .*00000001-00000002"):
        _episodes(out)
    (out / SHARD_DIR / "00000001-00000002" / "main_data.hdf5").unlink()
    (out / SHARD_DIR / "00000001-00000002" / "metadata.json").unlink()
    (out / SHARD_DIR / "00000001-00000002").rmdir()
    with pytest.raises(ValueError, match="shard 00000002-00000003 does not follow episode 1"):
        load_dataset_info(out)
    (out / INFO_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt dataset .*wmplan.json is unreadable"):
        load_dataset_info(out)


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="episodes must be an int >= 0"):
        collect(CFG, -1, "pusher", 0, tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="shard_episodes must be an int >= 1"):
        collect(CFG, 1, "pusher", 0, tmp_path / "a", shard_episodes=0, progress=False)
    with pytest.raises(ValueError, match="'waypoint' needs a PointMazeEnv"):
        collect(CFG, 1, "waypoint", 0, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()


def test_cli_writes_only_the_dataset(tmp_path, monkeypatch, full):
    monkeypatch.chdir(tmp_path)
    argv = ["wmplan-collect", "env=pusht", "episodes=2", "seed=7", "shard_episodes=2",
            "env.resolution=16", "env.episode_length=8", "out_dir=data/pusht", "policy=pusher"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(tmp_path / "data") == ["pusht"]
    assert json.loads((tmp_path / "data/pusht" / INFO_FILE).read_text())["policy"] == "pusher"
    _assert_same(_episodes(tmp_path / "data/pusht"), full[:2])


def test_env_configs_follow_the_dino_wm_protocol():
    protocol = {"pusht": (5, 3), "pointmaze_umaze": (5, 3), "pointmaze_medium": (5, 3),
                "pointmaze_large": (5, 3), "wall": (5, 1), "rope": (1, 1), "granular": (1, 1)}  # fmt: skip
    for name, (frameskip, history) in protocol.items():
        cfg = load_env_config(name)
        assert (cfg.name, cfg.frameskip, cfg.history, cfg.resolution) == (name, frameskip, history, 64)
        assert set(yaml.safe_load((CONFIG_DIR / "env" / f"{name}.yaml").read_text())) == {
            f.name for f in dataclasses.fields(EnvConfig)
        }
    with pytest.raises(ValueError, match="no env config 'cartpole'"):
        load_env_config("cartpole")
    with pytest.raises(ValueError, match="frameskip must be a positive int"):
        load_env_config("wall", frameskip=0)
    with pytest.raises(ValueError, match="unknown environment id"):
        load_env_config("wall", id="wmplan/Nope-v0")


def test_frame_stride_must_divide_the_frameskip_and_is_part_of_the_settings(tmp_path):
    with pytest.raises(ValueError, match="frame_stride=3 must divide the env's frameskip \\(5\\)"):
        collect(CFG, 1, "pusher", 0, tmp_path / "a", frame_stride=3, progress=False)
    with pytest.raises(ValueError, match="frame_stride must be an int >= 1"):
        collect(CFG, 1, "pusher", 0, tmp_path / "a", frame_stride=0, progress=False)
    assert not (tmp_path / "a").exists()
    out = collect(CFG, 1, "pusher", 0, tmp_path / "b", frame_stride=5, progress=False)
    assert len(_episodes(out)[0]["pixels"]) == CFG.episode_length // 5 + 1
    with pytest.raises(ValueError, match="other settings .*frame_stride: 5 on disk vs None now"):
        collect(CFG, 2, "pusher", 0, out, progress=False)
