import json
import pickle

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import wmplan.data.importers as importers
from wmplan.data.dataset import INFO_FILE, ClipDataset, iter_episodes, load_dataset_info, read_info
from wmplan.data.importers import import_dataset, main, make_source, square_resize

R = 16  # imported resolution
H, W = 32, 48  # source frames: wider than tall, so crop and pad differ


def _frames(n, seed):
    """n frames [n, 32, 48, 3]: a solid colour per frame in the centre square, white side bands."""
    frames = np.full((n, H, W, 3), 255, np.uint8)
    for t in range(n):
        frames[t, :, 8:40] = [(37 * t + 11 * seed) % 200 + 20, (90 + 23 * t) % 200 + 20, (15 * seed + 60) % 200 + 20]
    return frames


def _write_mp4(path, frames, fps=10, codec="h264"):
    """Near-lossless H.264 (yuv444p, qp 0), or AV1 (LeRobot v3's default codec; yuv420p)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec == "av1":
        iio.imwrite(path, frames, fps=fps, codec="libsvtav1", macro_block_size=1, output_params=["-crf", "10"])
    else:
        iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1, pixelformat="yuv444p",
                    output_params=["-qp", "0"])  # fmt: skip


def _expected(frames, fit="crop"):
    return np.stack([square_resize(f, R, fit) for f in frames])


def _assert_frames(actual, source, fit="crop", atol=3):
    """atol: H.264 qp 0 rounds by a few levels; AV1 (yuv420p) bleeds chroma at colour edges."""
    assert actual.dtype == np.uint8 and actual.shape == (len(source), R, R, 3)
    np.testing.assert_allclose(actual.astype(int), _expected(source, fit).astype(int), atol=atol, rtol=0)


def _episodes(path):
    return list(iter_episodes(path))


def _check_clips(path, episodes, atol=3):
    """ClipDataset over the import sees the episodes as written: boundaries, frames, actions."""
    clips = ClipDataset(path, num_frames=2, frameskip=1, val_fraction=0.0)
    np.testing.assert_array_equal(np.diff(clips.offsets), [len(f) for f, _ in episodes])
    assert len(clips) == sum(len(f) - 1 for f, _ in episodes)
    for index in range(len(clips)):
        item = clips[index]
        frames, actions = episodes[item["episode"]]
        s = item["start"]
        _assert_frames(item["pixels"], frames[s : s + 2], atol=atol)
        np.testing.assert_array_equal(item["actions"], actions[s : s + 1])


# -- plain MP4 folders ------------------------------------------------------------------


def test_mp4_folder_with_npy_and_npz_actions(tmp_path):
    src = tmp_path / "src"
    a_frames, b_frames = _frames(5, 0), _frames(4, 1)
    a_actions = np.arange(8, dtype=np.float32).reshape(4, 2)  # one per transition
    b_actions = -np.arange(8, dtype=np.float32).reshape(4, 2)  # one per frame: the last is dropped
    _write_mp4(src / "a.mp4", a_frames)
    np.save(src / "a.npy", a_actions)
    _write_mp4(src / "b.mp4", b_frames)
    np.savez(src / "b.npz", actions=b_actions)
    out = import_dataset(make_source("mp4", src), tmp_path / "d", resolution=R, shard_episodes=1, progress=False)
    info = load_dataset_info(out)
    assert (info["num_episodes"], info["num_steps"], info["action_dim"], info["proprio_dim"]) == (2, 7, 2, 0)
    assert info["action_free"] is False and info["source"]["format"] == "mp4" and info["source"]["fit"] == "crop"
    assert info["env_id"] == "external/mp4" and info["resolution"] == R
    eps = _episodes(out)
    np.testing.assert_array_equal(eps[0]["actions"], a_actions)
    np.testing.assert_array_equal(eps[1]["actions"], b_actions[:3])
    _check_clips(out, [(a_frames, a_actions), (b_frames, b_actions[:3])])


def test_pad_fit_letterboxes_instead_of_cropping(tmp_path):
    frames = _frames(3, 2)
    _write_mp4(tmp_path / "src" / "a.mp4", frames)
    np.save(tmp_path / "src" / "a.npy", np.zeros((2, 1), np.float32))
    out = import_dataset(make_source("mp4", tmp_path / "src"), tmp_path / "d", resolution=R, fit="pad", progress=False)
    pixels = _episodes(out)[0]["pixels"]
    _assert_frames(pixels, frames, fit="pad")
    assert pixels[:, 0].max() <= 3 and pixels[:, -1].max() <= 3  # black bars above and below
    assert pixels[:, R // 2, 0].min() >= 250  # the white side band survives padding


def test_parquet_actions_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    frames, actions = _frames(4, 3), np.arange(9, dtype=np.float32).reshape(3, 3)
    _write_mp4(tmp_path / "src" / "a.mp4", frames)
    pq.write_table(pa.table({"action": [list(a) for a in actions]}), tmp_path / "src" / "a.parquet")
    out = import_dataset(make_source("mp4", tmp_path / "src", actions_key="action"), tmp_path / "d", resolution=R, progress=False)
    np.testing.assert_array_equal(_episodes(out)[0]["actions"], actions)


def test_action_free_video_stores_zero_actions_and_says_so(tmp_path):
    frames = [_frames(4, 4), _frames(3, 5)]
    for i, f in enumerate(frames):
        _write_mp4(tmp_path / "src" / f"clip{i}.mp4", f)
    with pytest.raises(ValueError, match="action-free video needs a declared action_dim"):
        make_source("video", tmp_path / "src")
    with pytest.raises(ValueError, match=r"clip0.mp4 has no actions file beside it"):
        make_source("mp4", tmp_path / "src")  # with actions required, a bare video is an error
    out = import_dataset(make_source("video", tmp_path / "src", action_dim=3), tmp_path / "d", resolution=R, progress=False)
    info = read_info(out)
    assert info["action_free"] is True and info["action_dim"] == 3 and info["policy"] == "import:video"
    _check_clips(out, [(f, np.zeros((len(f) - 1, 3), np.float32)) for f in frames])


def test_bad_mp4_inputs_name_the_file(tmp_path):
    src = tmp_path / "src"
    _write_mp4(src / "a.mp4", _frames(4, 0))
    np.save(src / "a.npy", np.zeros((7, 2), np.float32))
    with pytest.raises(ValueError, match=r"a.mp4: 7 actions for 4 frames \(expected 3 or 4\)"):
        import_dataset(make_source("mp4", src), tmp_path / "d1", resolution=R, progress=False)
    (src / "a.npy").unlink()
    np.savez(src / "a.npz", acts=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"a.npz has no 'actions' array"):
        make_source("mp4", src)
    (src / "a.npz").unlink()
    np.save(src / "a.npy", np.zeros((3, 2), np.float32))
    (src / "b.mp4").write_bytes(b"not a video" * 50)
    np.save(src / "b.npy", np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"cannot decode video .*b.mp4"):
        import_dataset(make_source("mp4", src), tmp_path / "d2", resolution=R, progress=False)
    assert load_dataset_info(tmp_path / "d2")["num_episodes"] == 1  # the good episode before it is kept
    np.save(src / "a.npy", np.zeros((3, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"a.npy: actions must be a numeric \[T, A\] array"):
        make_source("mp4", src)
    with pytest.raises(ValueError, match="no .mp4 files in"):
        make_source("mp4", tmp_path)


def test_rerun_resumes_and_other_settings_are_refused(tmp_path, monkeypatch):
    frames = [_frames(3 + i, i) for i in range(3)]
    for i, f in enumerate(frames):
        _write_mp4(tmp_path / "src" / f"e{i}.mp4", f)
        np.save(tmp_path / "src" / f"e{i}.npy", np.full((len(f) - 1, 2), i, np.float32))
    real = importers.read_video

    def crash_on_third(path):
        if path.name == "e2.mp4":
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(importers, "read_video", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        import_dataset(make_source("mp4", tmp_path / "src"), tmp_path / "d", resolution=R, progress=False)
    assert load_dataset_info(tmp_path / "d")["num_episodes"] == 2
    monkeypatch.undo()
    import_dataset(make_source("mp4", tmp_path / "src"), tmp_path / "d", resolution=R, progress=False)
    eps = _episodes(tmp_path / "d")
    assert [len(e["pixels"]) for e in eps] == [3, 4, 5] and eps[2]["actions"][0, 0] == 2
    with pytest.raises(ValueError, match="other settings .*resolution: 16 on disk vs 8 now"):
        import_dataset(make_source("mp4", tmp_path / "src"), tmp_path / "d", resolution=8, progress=False)


# -- LeRobot v3 -------------------------------------------------------------------------


@pytest.fixture(params=["stub", "pyarrow"])
def write_table(request, monkeypatch):
    """Writes a parquet table: with pyarrow when installed; otherwise ("stub") a JSON file that
    a stand-in for importers._read_parquet reads, so the layout logic is tested without pyarrow."""
    if request.param == "pyarrow":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        def write(path, table):
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(table), path)

        return write

    def read(path, columns):
        table = json.loads(path.read_text())
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValueError(f"parquet file {path} has no column {missing[0]!r}")
        return {c: np.asarray(table[c]) for c in columns}

    monkeypatch.setattr(importers, "_read_parquet", read)

    def write(path, table):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table))

    return write


def _lerobot(root, write_table, lengths=(5, 4, 3), fps=10):
    """A LeRobot v3 folder: episodes 0 and 1 share data file 0 and video file 0, episode 2 has
    file 1 of both; two cameras (the second is the one imported in the test)."""
    info = {
        "codebase_version": "v3.0", "fps": fps, "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.images.wrist": {"dtype": "video", "shape": [H, W, 3]},
            "observation.images.front": {"dtype": "video", "shape": [H, W, 3]},
            "observation.state": {"dtype": "float32", "shape": [3]},
            "action": {"dtype": "float32", "shape": [2]},
            "timestamp": {"dtype": "float32", "shape": [1]},
        },
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    files = [0, 0, 1]
    episodes, rows = [], {0: [], 1: []}
    video_frames = {0: [], 1: []}
    for ep, (n, f) in enumerate(zip(lengths, files)):
        frames = _frames(n, ep)
        actions = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * ep
        state = np.arange(n * 3, dtype=np.float32).reshape(n, 3) - 50 * ep
        start = sum(len(v) for v in video_frames[f])
        video_frames[f].append(frames)
        rows[f] += [{"episode_index": ep, "frame_index": t, "action": actions[t].tolist(),
                     "observation.state": state[t].tolist(), "timestamp": t / fps} for t in range(n)]  # fmt: skip
        episodes.append({"episode_index": ep, "length": n, "data/chunk_index": 0, "data/file_index": f,
                         **{f"videos/observation.images.{cam}/{k}": v for cam in ("wrist", "front") for k, v in
                            (("chunk_index", 0), ("file_index", f), ("from_timestamp", start / fps),
                             ("to_timestamp", (start + n) / fps))}})  # fmt: skip
        yield frames, actions, state
    for f, r in rows.items():
        write_table(root / "data" / "chunk-000" / f"file-{f:03d}.parquet", {k: [row[k] for row in r] for k in r[0]})
        for cam in ("wrist", "front"):
            frames = np.concatenate(video_frames[f])
            video = root / "videos" / f"observation.images.{cam}" / "chunk-000" / f"file-{f:03d}.mp4"
            _write_mp4(video, frames, codec="av1") if cam == "front" else _write_mp4(video, 255 - frames)
    write_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet", {k: [e[k] for e in episodes] for k in episodes[0]})


def test_lerobot_v3_episodes_map_to_video_segments_and_table_rows(tmp_path, write_table):
    expected = list(_lerobot(tmp_path / "lr", write_table))
    src = make_source("lerobot", tmp_path / "lr", camera="observation.images.front")
    out = import_dataset(src, tmp_path / "d", resolution=R, shard_episodes=2, progress=False)
    info = load_dataset_info(out)
    assert (info["num_episodes"], info["num_steps"], info["action_dim"], info["proprio_dim"], info["state_dim"]) == (3, 9, 2, 3, 3)
    assert info["source"]["camera"] == "observation.images.front" and info["source"]["fps"] == 10
    for ep, (frames, actions, state) in zip(_episodes(out), expected):
        _assert_frames(ep["pixels"], frames, atol=10)
        np.testing.assert_array_equal(ep["actions"], actions[:-1])  # the last frame's action leads out
        np.testing.assert_array_equal(ep["proprio"], state)
        np.testing.assert_array_equal(ep["states"], state)
    _check_clips(out, [(f, a[:-1]) for f, a, _ in expected], atol=10)
    assert make_source("lerobot", tmp_path / "lr").camera == "observation.images.wrist"  # default: the first video


def test_lerobot_bad_inputs_name_the_file(tmp_path, write_table):
    root = tmp_path / "lr"
    list(_lerobot(root, write_table))
    with pytest.raises(ValueError, match="no video feature 'observation.images.top'"):
        make_source("lerobot", root, camera="observation.images.top")
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    good = meta.read_bytes()
    table = {"episode_index": [0], "length": [7], "data/chunk_index": [0], "data/file_index": [0],
             **{f"videos/observation.images.wrist/{k}": [v] for k, v in
                (("chunk_index", 0), ("file_index", 0), ("from_timestamp", 0.0), ("to_timestamp", 0.7))}}  # fmt: skip
    write_table(meta, table)
    with pytest.raises(ValueError, match=r"file-000.parquet: episode 0 has 5 rows, meta/episodes says length 7"):
        import_dataset(make_source("lerobot", root), tmp_path / "d1", resolution=R, progress=False)
    table["length"] = [5]
    write_table(meta, table)
    with pytest.raises(ValueError, match=r"meta/episodes of .*: episode 0 spans 7.0 frames of file-000.mp4, but has length 5"):
        import_dataset(make_source("lerobot", root), tmp_path / "d2", resolution=R, progress=False)
    table["videos/observation.images.wrist/from_timestamp"] = [0.6]
    table["videos/observation.images.wrist/to_timestamp"] = [1.1]
    write_table(meta, table)
    with pytest.raises(ValueError, match=r"video .*wrist/chunk-000/file-000.mp4 ends after 9 frames"):
        import_dataset(make_source("lerobot", root), tmp_path / "d3", resolution=R, progress=False)
    del table["videos/observation.images.wrist/to_timestamp"]
    write_table(meta, table)
    with pytest.raises(ValueError, match=r"file-000.parquet has no column 'videos/observation.images.wrist/to_timestamp'"):
        make_source("lerobot", root)
    meta.write_bytes(good)
    info = json.loads((root / "meta" / "info.json").read_text())
    (root / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match=r"info.json: codebase_version 'v2.1' is not supported"):
        make_source("lerobot", root)


# -- DINO-WM ----------------------------------------------------------------------------


def _dino(root, layout, lengths=(4, 3)):
    """DINO-WM files: pusht (mp4 obses, rel/abs actions, velocities, seq_lengths.pkl),
    point_maze (THWC uint8 .pth obses, actions.pth, seq_lengths.pth), wall (TCHW float .pth,
    no seq_lengths), deformable (states [N, T, P, 4], {i:06d}/obses.pth)."""
    root.mkdir(parents=True)
    n, t = len(lengths), max(lengths)
    rng = np.random.default_rng(0)
    states = rng.normal(size=(n, t, 4, 4) if layout == "deformable" else (n, t, 5)).astype(np.float32)
    actions = rng.normal(size=(n, t, 2)).astype(np.float32)
    torch.save(torch.from_numpy(states), root / "states.pth")
    torch.save(torch.from_numpy(actions), root / ("rel_actions.pth" if layout == "pusht" else "actions.pth"))
    if layout == "pusht":
        torch.save(torch.from_numpy(actions * 100), root / "abs_actions.pth")
        vel = rng.normal(size=(n, t, 2)).astype(np.float32)
        torch.save(torch.from_numpy(vel), root / "velocities.pth")
        (root / "seq_lengths.pkl").write_bytes(pickle.dumps(list(lengths)))
    elif layout == "point_maze":
        torch.save(torch.tensor(lengths), root / "seq_lengths.pth")
    frames = []
    for i, length in enumerate(lengths):
        f = _frames(length, i)
        frames.append(f)
        if layout == "pusht":
            _write_mp4(root / "obses" / f"episode_{i:03d}.mp4", f)
        elif layout == "point_maze":
            (root / "obses").mkdir(exist_ok=True)
            torch.save(torch.from_numpy(f), root / "obses" / f"episode_{i:03d}.pth")
        elif layout == "wall":
            (root / "obses").mkdir(exist_ok=True)
            torch.save(torch.from_numpy(f.transpose(0, 3, 1, 2).astype(np.float32)), root / "obses" / f"episode_{i:03d}.pth")
        else:
            (root / f"{i:06d}").mkdir()
            torch.save(torch.from_numpy(f), root / f"{i:06d}" / "obses.pth")
    return frames, actions, states


@pytest.mark.parametrize("layout", ["pusht", "point_maze", "wall", "deformable"])
def test_dino_wm_layouts(tmp_path, layout):
    lengths = (4, 3) if layout in ("pusht", "point_maze") else (4, 4)
    frames, actions, states = _dino(tmp_path / "dino", layout, lengths)
    out = import_dataset(make_source("dino_wm", tmp_path / "dino"), tmp_path / "d", resolution=R, progress=False)
    info = load_dataset_info(out)
    state_dim, proprio_dim = {"pusht": (7, 4), "point_maze": (5, 5), "wall": (5, 5), "deformable": (16, 0)}[layout]
    assert (info["num_episodes"], info["action_dim"], info["state_dim"], info["proprio_dim"]) == (2, 2, state_dim, proprio_dim)
    for i, ep in enumerate(_episodes(out)):
        n = lengths[i]
        _assert_frames(ep["pixels"], frames[i])
        np.testing.assert_array_equal(ep["actions"], actions[i, : n - 1])
        flat = states[i, :n].reshape(n, -1).astype(np.float64)
        if layout == "pusht":  # DINO-WM appends the agent velocity to the state
            vel = torch.load(tmp_path / "dino" / "velocities.pth", weights_only=True).numpy()[i, :n]
            flat = np.concatenate([flat, vel], -1)
        np.testing.assert_array_equal(ep["states"], flat)
        if layout in ("point_maze", "wall"):
            np.testing.assert_array_equal(ep["proprio"], flat.astype(np.float32))
    if layout == "pusht":
        vel = torch.load(tmp_path / "dino" / "velocities.pth", weights_only=True).numpy()
        ep = _episodes(out)[0]
        np.testing.assert_allclose(ep["proprio"], np.concatenate([states[0, :4, :2], vel[0, :4]], -1))
        abs_src = make_source("dino_wm", tmp_path / "dino", actions="abs")
        assert abs_src.description()["actions"] == "abs_actions.pth"
        np.testing.assert_allclose(next(abs_src.episodes(0, R, "crop")).actions, actions[0, :3] * 100)
    _check_clips(out, [(frames[i], actions[i, : lengths[i] - 1]) for i in range(2)])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_dino_wm_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / "dino"
    _dino(root, "point_maze")
    (root / "obses" / "episode_001.pth").unlink()
    with pytest.raises(ValueError, match=r"episode 1 has no observations: none of .*obses/episode_001.pth"):
        import_dataset(make_source("dino_wm", root), tmp_path / "d", resolution=R, progress=False)
    torch.save(torch.zeros(2, H, W, 3, dtype=torch.uint8), root / "obses" / "episode_001.pth")
    with pytest.raises(ValueError, match=r"episode_001.pth: 2 frames, but episode 1 has seq_length 3"):
        import_dataset(make_source("dino_wm", root), tmp_path / "d", resolution=R, progress=False)
    torch.save(torch.tensor([4, 3, 3]), root / "seq_lengths.pth")
    with pytest.raises(ValueError, match=r"seq_lengths.pth: seq_lengths must be 2 ints"):
        make_source("dino_wm", root)
    (root / "seq_lengths.pth").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "seq_lengths.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match=r"seq_lengths.pkl: only plain lists of numbers"):
        make_source("dino_wm", root)
    (root / "seq_lengths.pkl").unlink()
    (root / "actions.pth").write_bytes(pickle.dumps(Evil()))  # a pickle that would run code
    with pytest.raises(ValueError, match=r"cannot read .*actions.pth as a tensor file \(torch.load weights_only=True\)"):
        make_source("dino_wm", root)
    (root / "states.pth").unlink()
    with pytest.raises(ValueError, match=r"not a DINO-WM dataset: .*states.pth is missing"):
        make_source("dino_wm", root)


# -- CLI --------------------------------------------------------------------------------


def test_cli_imports_and_reports_bad_input_in_one_line(tmp_path, capsys):
    _write_mp4(tmp_path / "src" / "a.mp4", _frames(3, 0))
    main(["video", str(tmp_path / "src"), str(tmp_path / "d"), "--resolution", str(R), "--action-dim", "2", "--no-progress"])
    assert "1 episodes, 2 steps imported from video (action-free)" in capsys.readouterr().out
    assert json.loads((tmp_path / "d" / INFO_FILE).read_text())["action_free"] is True
    with pytest.raises(SystemExit) as exit_info:
        main(["mp4", str(tmp_path / "src"), str(tmp_path / "e"), "--no-progress"])
    assert exit_info.value.code == 2
    assert "wmplan-import: error: " in capsys.readouterr().err


def test_env_label_makes_the_data_an_env_dataset_and_checks_action_dims(tmp_path):
    _write_mp4(tmp_path / "src" / "a.mp4", _frames(3, 0))
    src = make_source("video", tmp_path / "src", action_dim=2)
    out = import_dataset(src, tmp_path / "d", resolution=R, env="wall", frameskip=5, progress=False)
    info = read_info(out)
    assert (info["env"], info["env_id"], info["frameskip"], info["action_free"]) == ("wall", "wmplan/Wall-v0", 5, True)
    with pytest.raises(ValueError, match="env 'wall' has 2-D actions, the imported data 3-D"):
        import_dataset(make_source("video", tmp_path / "src", action_dim=3), tmp_path / "e", resolution=R, env="wall", progress=False)


def test_wmplan_train_refuses_action_free_data_unless_actions_are_hidden(tmp_path):
    """Zero actions stored for action-free video must not be learned as a real action."""
    from conftest import train_config

    import wmplan.train

    for name in "abcd":  # enough frames for 3-frame clips at frameskip 5 in both splits
        _write_mp4(tmp_path / "src" / f"{name}.mp4", _frames(16, 0))
    out = import_dataset(make_source("video", tmp_path / "src", action_dim=2), tmp_path / "d", resolution=16,
                         env="wall", frameskip=5, progress=False)
    with pytest.raises(ValueError, match="is action-free .* diffusion.action_dropout=1"):
        wmplan.train.train(train_config(out, tmp_path / "run", 2))
    # Action-free pretraining: every frame's action hidden from the model.
    assert wmplan.train.train(train_config(out, tmp_path / "pre", 2, "diffusion.action_dropout=1.0")).is_file()
