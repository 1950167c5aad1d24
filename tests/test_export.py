"""``wmplan.export``: files round-trip, the camera reprojects, depth is metric, bad inputs fail clearly."""

from __future__ import annotations

import json
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from wmplan.envs.config import load_env_config
from wmplan.envs.mujoco_env import mujoco  # imported after configure_mujoco_gl (headless EGL)
from wmplan.envs.pointmaze import PointMazeEnv
from wmplan.export import (check_actions, dataset_start, env_step_seconds, export_rollout, load_world_model, main,
                           mujoco_camera, predict_frames, project, replay, scene_camera)
from wmplan.rollout import file_hash, planning_sampler

KEYS = {"schema", "env_id", "fps", "frameskip", "env_step_seconds", "actions", "context_actions", "seed",
        "sampler", "checkpoint", "camera", "depth", "files", "start", "num_frames", "size", "video"}


@pytest.fixture(scope="module")
def wm(checkpoint):
    return load_world_model(checkpoint, steps=1)


def read_pngs(folder) -> np.ndarray:
    return np.stack([iio.imread(p) for p in sorted(folder.glob("*.png"))])


def red_centroid(image: np.ndarray) -> np.ndarray:
    """(u, v) = (column, row) centroid of the red pixels."""
    r, g, b = (image[..., c].astype(int) for c in range(3))
    rows, cols = np.nonzero((r > 150) & (g < 100) & (b < 100))
    assert len(rows), "no red pixels"
    return np.array([cols.mean(), rows.mean()])


def test_wall_export_round_trips(wm, wall_data, checkpoint, tmp_path):
    out = tmp_path / "export"
    record = export_rollout(wm, out, dataset=wall_data, clip=0, horizon=2, seed=3, checkpoint_path=checkpoint)
    start = dataset_start(wm, wall_data, 0, 2, 1, 0)
    expected = predict_frames(wm, start, start["actions"], seed=3)  # [3, 16, 16, 3]
    assert np.array_equal(read_pngs(out / "frames"), expected)
    video = iio.imread(out / "rollout.mp4")
    assert video.shape == (3, 16, 16, 3)
    meta = json.loads((out / "rollout.json").read_text())
    assert KEYS <= meta.keys() and meta == json.loads(json.dumps(record))
    assert np.array_equal(np.asarray(meta["actions"], np.float32), start["actions"])
    assert meta["checkpoint"]["sha256"] == file_hash(checkpoint) and meta["seed"] == 3
    assert meta["env_id"] == "wmplan/Wall-v0" and meta["frameskip"] == 5 and meta["fps"] == 2.0
    assert meta["camera"]["projection"] == "orthographic_topdown_2d" and not meta["depth"]["available"]
    assert not (out / "depth").exists()
    # The real env replays the clip's actions from its start state: the dataset's own frames.
    clip = wm_clip(wall_data, wm)
    assert np.array_equal(read_pngs(out / "real"), clip)
    with pytest.raises(FileExistsError, match="not empty"):
        export_rollout(wm, out, dataset=wall_data, clip=0, horizon=2)


def wm_clip(wall_data, wm) -> np.ndarray:
    from wmplan.data.dataset import ClipDataset

    data = wm.module.cfg.data
    clips = ClipDataset(wall_data, num_frames=3, frameskip=5, split="val", val_fraction=float(data.val_fraction),
                        seed=int(data.get("split_seed", 0)))
    return clips[0]["pixels"]


def test_cli_env_start_actions_file_and_resize(wm, checkpoint, tmp_path):
    env_actions = np.random.default_rng(0).uniform(-1, 1, (10, 2)).astype(np.float32)  # [H*k, A], k = 5
    np.save(tmp_path / "a.npy", env_actions)
    out = tmp_path / "cli"
    main([str(checkpoint), "--env-seed", "1", "--actions", str(tmp_path / "a.npy"), "--size", "32",
          "--resize", "bilinear", "--seed", "5", "--out", str(out)])
    meta = json.loads((out / "rollout.json").read_text())
    assert np.array_equal(np.asarray(meta["actions"], np.float32), env_actions.reshape(2, 10))
    assert read_pngs(out / "frames").shape == (3, 32, 32, 3) and read_pngs(out / "real").shape == (3, 32, 32, 3)
    assert iio.imread(out / "rollout.mp4").shape == (3, 32, 32, 3)
    assert meta["size"] == 32 and meta["start"]["kind"] == "env" and meta["start"]["env_seed"] == 1
    assert meta["camera"]["pixels_per_unit"] == 32 / 65


def test_bad_inputs_fail_clearly(wm, wall_data, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no world-model checkpoint"):
        load_world_model(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match=r"actions must be \[H, 10\]"):
        check_actions(np.zeros((3, 4)), wm, 2)
    with pytest.raises(ValueError, match="actions must be"):
        export_rollout(wm, tmp_path / "a", dataset=wall_data, clip=0, actions=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        check_actions(np.full((1, 10), np.nan), wm, 2)
    with pytest.raises(ValueError, match="give an action sequence"):
        export_rollout(wm, tmp_path / "b", env_seed=0)
    monkeypatch.setattr(wm.module.codec, "can_decode", False)
    with pytest.raises(ValueError, match="encode-only"):
        export_rollout(wm, tmp_path / "c", dataset=wall_data, clip=0)
    assert not any(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_pointmaze_camera_reprojects_and_depth_is_metric():
    env = PointMazeEnv("medium", resolution=128)
    state = np.array([2.3, 4.6, 0.0, 0.0])
    frames, depth = replay(env, state, np.full((2, 10), 0.5, np.float32), 5, "top")
    assert depth.shape == (3, 128, 128) and depth.dtype == np.float32
    env.reset(options={"state": state})
    camera, name = scene_camera(env, 128)
    assert name == "top" and camera["projection"] == "orthographic" and camera["extent_m"] == [8.0, 8.0]
    for frame, d, s in zip(frames, depth, env.simulate(state, np.full((10, 2), 0.5))[::5]):
        top = np.array([s[0], s[1], 0.25 + 0.2])  # the ball marker's top: site at z 0.25, radius 0.2
        uv, z = project(camera, top[None])
        assert np.abs(uv[0] - red_centroid(frame)).max() < 1.0
        u, v = np.round(uv[0]).astype(int)
        forward = np.asarray(camera["c2w"])[:3, 2]  # OpenCV: the camera looks along +z
        expected = (top - np.asarray(camera["c2w"])[:3, 3]) @ forward
        assert abs(z[0] - expected) < 1e-9 and abs(d[v, u] - expected) < 0.01
    assert env_step_seconds(env)[0] == pytest.approx(0.05)


PERSPECTIVE = """<mujoco><visual><global offwidth="96" offheight="72"/></visual><worldbody>
  <light pos="0 0 3"/><geom type="plane" size="2 2 0.1" rgba="1 1 1 1"/>
  <camera name="cam" pos="0.8 -1.2 1.1" xyaxes="0.83 0.55 0 -0.3 0.45 0.84" fovy="50"/>
  <geom name="ball" type="sphere" pos="0.25 0.1 0.05" size="0.05" rgba="1 0 0 1"/>
</worldbody></mujoco>"""


def test_perspective_camera_reprojects():
    model = mujoco.MjModel.from_xml_string(PERSPECTIVE)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    camera = mujoco_camera(model, data, "cam", 96, 72)
    with mujoco.Renderer(model, 72, 96) as renderer:
        renderer.update_scene(data, camera="cam")
        image = renderer.render()
    uv, z = project(camera, data.geom("ball").xpos[None])
    assert camera["projection"] == "perspective" and z[0] > 0
    assert np.abs(uv[0] - red_centroid(image)).max() < 1.0


class StubWorldModel:
    """Predicts the last context frame forever; frames are their own latents. Tests the MuJoCo export path."""

    def __init__(self, env_name: str):
        env = load_env_config(env_name, resolution=32)
        self.env_id, self.resolution, self.frameskip, self.action_dim = env.id, 32, env.frameskip, 10
        self.sampler, self.checkpoint_hash = planning_sampler(1), "0" * 64
        cfg = OmegaConf.create({"env": {k: getattr(env, k) for k in env.__dataclass_fields__}})
        self.module = SimpleNamespace(cfg=cfg, codec=SimpleNamespace(can_decode=True, cfg=SimpleNamespace(name="stub")))

    def encode(self, obs):
        return {"latents": torch.as_tensor(obs["pixels"]).float(), "proprio": None}

    def rollout(self, ctx, actions, seed=0):
        b, s, h = actions.shape[:3]
        return {"latents": ctx["latents"][:, -1:].unsqueeze(1).expand(b, s, h, 32, 32, 3)}

    def decode(self, latents):
        return latents.to(torch.uint8)


def test_pointmaze_export_writes_depth_and_real_frames(tmp_path):
    actions = np.full((2, 10), 0.5, np.float32)
    record = export_rollout(StubWorldModel("pointmaze_umaze"), tmp_path / "pm", state=np.array([1.0, 1.0, 0, 0]),
                            actions=actions, size=64)
    out = tmp_path / "pm"
    assert read_pngs(out / "frames").shape == (3, 64, 64, 3) and read_pngs(out / "real").shape == (3, 64, 64, 3)
    depth = [np.load(out / "depth" / f"{i:06d}.npy") for i in range(3)]
    assert all(d.shape == (64, 64) and d.dtype == np.float32 for d in depth)
    assert record["fps"] == 4.0 and record["depth"]["available"] and record["camera"]["projection"] == "orthographic"
    assert record["camera"]["width"] == 64 and record["camera"]["sx"] == 64 / 5


def test_context_frames_and_odd_sizes(wm, wall_data, tmp_path):
    record = export_rollout(wm, tmp_path / "ctx", dataset=wall_data, clip=1, context=2, horizon=1, size=17)
    assert record["context_frames"] == 2 and len(record["context_actions"]) == 1 and len(record["actions"]) == 1
    assert read_pngs(tmp_path / "ctx" / "frames").shape == (3, 17, 17, 3)
    assert iio.imread(tmp_path / "ctx" / "rollout.mp4").shape == (3, 18, 18, 3) and record["video"]["padded"]
