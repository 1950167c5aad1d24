"""Export one world-model rollout for 3-D reconstruction pipelines (``docs/EXPORT.md``).

    python -m wmplan.export CKPT --dataset data/pointmaze --clip 3 --horizon 8 --out outputs/export/pm
    python -m wmplan.export CKPT --env-seed 0 --actions plan.npy --size 256 --out outputs/export/pm

writes ``frames/000000.png ...`` (the decoded rollout), ``rollout.mp4``, ``real/`` (the true
simulator's frames under the same actions from the same start state), ``depth/`` (its
z-depth in metres, MuJoCo scenes only) and ``rollout.json`` (env, fps, actions, seed,
sampler, checkpoint sha256 and the camera). The folder is built next to ``--out`` and
renamed into place, so a reader sees a complete export or none.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from wmplan import __version__
from wmplan.atomic import fsync_path, write_json_atomic
from wmplan.checkpoint import resolve_path
from wmplan.envs.base import GoalEnv
from wmplan.envs.config import EnvConfig
from wmplan.rollout import WorldModel, planning_sampler
from wmplan.video import save_video

SCHEMA = "wmplan-export/1"
RESIZE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
# OpenGL camera axes (x right, y up, looking along -z) to OpenCV's (x right, y down, looking along +z).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


# -- inputs -----------------------------------------------------------------------------


def load_world_model(checkpoint: str | Path, steps: int = 1, schedule: str = "full_sequence") -> WorldModel:
    """The checkpoint's world model with a ``steps``-step sampler; refuses encode-only codecs."""
    path = resolve_path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no world-model checkpoint at {path}")
    sampler = dataclasses.replace(planning_sampler(steps), schedule=schedule)
    wm = WorldModel.from_checkpoint(path, sampler=sampler)
    check_decodes(wm)
    return wm


def check_decodes(wm: WorldModel) -> None:
    """Exported frames are pixels: the model's latent codec must decode."""
    codec = wm.module.codec
    if not codec.can_decode:
        raise ValueError(f"codec {codec.cfg.name!r} of this world model is encode-only: its predicted "
                         "latents cannot be decoded to frames, so there is nothing to export")


def env_config(wm: WorldModel) -> EnvConfig:
    return EnvConfig(**OmegaConf.to_container(wm.module.cfg.env, resolve=True))


def check_actions(actions: Any, wm: WorldModel, env_action_dim: int) -> np.ndarray:
    """Planner actions float32 [H, k*A]; env actions [H*k, A] are regrouped into them."""
    a = np.asarray(actions, dtype=np.float32)
    k, aw = wm.frameskip, wm.action_dim
    if a.ndim == 2 and k > 1 and a.shape[1] == env_action_dim and len(a) % k == 0:
        a = a.reshape(len(a) // k, aw)  # k consecutive env actions make one planner action
    if a.ndim != 2 or a.shape[1] != aw or len(a) < 1:
        raise ValueError(f"actions must be [H, {aw}] (H >= 1 planner steps of frameskip {k} env actions "
                         f"of dimension {env_action_dim}) or [H*{k}, {env_action_dim}], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("actions contain NaN or inf")
    return a


def load_actions(path: str | Path, wm: WorldModel, env_action_dim: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no action file at {path}")
    return check_actions(np.load(path, allow_pickle=False), wm, env_action_dim)


def dataset_start(wm: WorldModel, path: str | Path, clip: int | None, horizon: int, context: int,
                  seed: int) -> dict[str, Any]:
    """A validation clip of ``context + horizon`` frames (index ``clip``, else drawn from ``seed``)
    from the checkpoint's own split: context frames, their actions, the recorded actions after them."""
    from wmplan.data.dataset import ClipDataset, load_dataset_info  # torch-free reader, imported lazily

    info = load_dataset_info(path)
    if info["env_id"] != wm.env_id or int(info["resolution"]) != wm.resolution:
        raise ValueError(f"dataset {path} holds {info['env_id']} at {info['resolution']} px, the world model "
                         f"was trained on {wm.env_id} at {wm.resolution} px")
    data = wm.module.cfg.data
    clips = ClipDataset(path, num_frames=context + horizon, frameskip=wm.frameskip, split="val",
                        val_fraction=float(data.val_fraction), seed=int(data.get("split_seed", 0)))
    index = int(np.random.default_rng(seed).integers(len(clips))) if clip is None else clip
    item = clips[index]
    return {"pixels": item["pixels"][:context], "proprio": item["proprio"][:context],
            "context_actions": item["actions"][:context - 1], "actions": item["actions"][context - 1:],
            "state": item["states"][0],
            "source": {"kind": "dataset", "dataset": str(path), "split": "val", "clip": index,
                       "episode": int(item["episode"]), "start_env_step": int(item["start"])}}


def env_start(env: GoalEnv, wm: WorldModel, state: np.ndarray | None, env_seed: int) -> dict[str, Any]:
    """One context frame rendered by the env (at the training resolution) from ``state``,
    or from the env's own start distribution drawn with ``env_seed``."""
    if state is None:
        state, _ = env.sample_start_and_goal(np.random.default_rng(env_seed))
    else:
        env_seed = None  # a given state was not drawn
    obs, _ = env.reset(options={"state": np.asarray(state, dtype=np.float64)})
    source = {"kind": "env", "env_seed": env_seed}
    return {"pixels": obs["pixels"][None], "proprio": obs["proprio"][None],
            "context_actions": np.zeros((0, wm.action_dim), np.float32), "actions": None,
            "state": env.get_state(), "source": source}


# -- rollout ----------------------------------------------------------------------------


def predict_frames(wm: WorldModel, start: dict[str, Any], actions: np.ndarray, seed: int) -> np.ndarray:
    """Decoded frames uint8 [Tc + H, r, r, 3]: the codec's reconstruction of the context frames,
    then the rollout under ``actions`` [H, Aw] with the sampling noise of ``torch.Generator(seed)``."""
    check_decodes(wm)
    enc = wm.encode({"pixels": start["pixels"][None], "proprio": start["proprio"][None]})
    ctx = {**enc, "actions": torch.as_tensor(start["context_actions"], dtype=torch.float32)[None]}
    pred = wm.rollout(ctx, torch.as_tensor(actions)[None, None], seed=[seed])
    latents = torch.cat([enc["latents"], pred["latents"][:, 0]], dim=1)  # [1, Tc + H, C, h, w]
    return wm.decode(latents)[0].cpu().numpy()


def replay(env: GoalEnv, state: np.ndarray, actions: np.ndarray, frameskip: int,
           depth_camera: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the true env from ``state`` under planner actions [N, k*A]: frames uint8 [N + 1, s, s, 3]
    and, for MuJoCo scenes, z-depth float32 [N + 1, s, s] in metres, one every ``frameskip`` env steps."""
    env.reset(options={"state": state})
    depth = DepthRenderer(env, depth_camera) if depth_camera else None
    frames, depths = [env.render()], [depth() if depth else None]
    try:
        for planner_action in actions:
            for a in planner_action.reshape(frameskip, -1):
                env.step(a)
            frames.append(env.render())
            depths.append(depth() if depth else None)
    finally:
        if depth:
            depth.close()
    return np.stack(frames), (np.stack(depths) if depth else None)


class DepthRenderer:
    """MuJoCo depth of the env's current state at its resolution, seen by camera ``camera``."""

    def __init__(self, env: GoalEnv, camera: str):
        import mujoco

        self.env, self.camera = env, camera
        self.renderer = mujoco.Renderer(env.model, env.resolution, env.resolution)
        self.renderer.enable_depth_rendering()

    def __call__(self) -> np.ndarray:
        self.renderer.update_scene(self.env.data, camera=self.camera)
        return self.renderer.render().astype(np.float32)

    def close(self) -> None:
        self.renderer.close()


# -- camera -----------------------------------------------------------------------------


def mujoco_camera(model: Any, data: Any, camera: str, width: int, height: int) -> dict[str, Any]:
    """Intrinsics and camera-to-world extrinsics of MuJoCo camera ``camera`` rendered at
    ``width`` x ``height``, read from ``model`` / ``data`` (call after ``mj_forward``)."""
    cid = model.camera(camera).id
    if np.any(model.cam_sensorsize[cid] > 0):  # physical sensor intrinsics: not used by wmplan's scenes
        raise NotImplementedError(f"camera {camera!r} sets sensorsize; only fovy cameras are supported")
    c2w_gl = np.eye(4)
    c2w_gl[:3, :3] = np.asarray(data.cam_xmat[cid]).reshape(3, 3)  # columns: camera axes in world
    c2w_gl[:3, 3] = data.cam_xpos[cid]
    fovy = float(model.cam_fovy[cid])
    cx, cy = (width - 1) / 2, (height - 1) / 2  # the frustum is symmetric about the image centre
    cam: dict[str, Any] = {
        "source": "mujoco", "name": camera, "width": width, "height": height, "fovy": fovy,
        "cx": cx, "cy": cy, "static": True,
        "c2w": (c2w_gl @ GL_TO_CV).tolist(), "convention": "opencv",
        "c2w_opengl": c2w_gl.tolist(),
        "pixel_origin": "centre of the top-left pixel is (u, v) = (0, 0); u right, v down",
        "clip_near_m": float(model.vis.map.znear * model.stat.extent),
        "clip_far_m": float(model.vis.map.zfar * model.stat.extent),
    }
    if is_orthographic(model, cid):
        extent = [fovy * width / height, fovy]  # MuJoCo: fovy is the view's height in metres
        cam.update(projection="orthographic", extent_m=extent, sx=width / extent[0], sy=height / extent[1],
                   fovy_units="metres (orthographic: the visible height)",
                   model="u = cx + sx * X, v = cy + sy * Y for a point (X, Y, Z) in OpenCV camera coordinates")
    else:
        f = (height / 2) / math.tan(math.radians(fovy) / 2)  # MuJoCo pixels are square: fx = fy
        cam.update(projection="perspective", fx=f, fy=f, fovy_units="degrees",
                   K=[[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]],
                   model="u = cx + fx * X / Z, v = cy + fy * Y / Z in OpenCV camera coordinates")
    return cam


def is_orthographic(model: Any, cid: int) -> bool:
    if hasattr(model, "cam_projection"):  # mujoco >= 3.3 (mjPROJ_ORTHOGRAPHIC = 1)
        return int(model.cam_projection[cid]) == 1
    return bool(model.cam_orthographic[cid])


def project(camera: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """Pixel (u, v) [N, 2] and z-depth [N] of world points [N, 3] under an exported MuJoCo camera."""
    w2c = np.linalg.inv(np.asarray(camera["c2w"]))
    p = np.asarray(points, dtype=np.float64) @ w2c[:3, :3].T + w2c[:3, 3]  # OpenCV camera coordinates
    if camera["projection"] == "orthographic":
        uv = np.stack([camera["cx"] + camera["sx"] * p[:, 0], camera["cy"] + camera["sy"] * p[:, 1]], 1)
    else:
        x, y = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
        uv = np.stack([camera["cx"] + camera["fx"] * x, camera["cy"] + camera["fy"] * y], 1)
    return uv, p[:, 2]


def planar_camera(env: GoalEnv, size: int) -> dict[str, Any]:
    """The 2-D envs' top-down image as an orthographic map from world (x, y) to pixel (u, v)."""
    from wmplan.envs.pusht import WORLD, PushTEnv
    from wmplan.envs.wall import GRID, WallEnv

    if isinstance(env, WallEnv):  # grid coordinate g is the centre of pixel g at 65 px
        scale, offset, units = size / GRID, 0.5 * size / GRID - 0.5, "Wall grid units (0..64)"
    elif isinstance(env, PushTEnv):  # PIL draws at f x the size (pixel-centre coordinates), then box-filters
        f = env._supersample
        scale, offset, units = size / WORLD, 0.5 / f - 0.5, "PushT world units (pymunk, 0..512)"
    else:
        raise NotImplementedError(f"no camera description for {type(env).__name__}")
    return {
        "source": "planar", "projection": "orthographic_topdown_2d", "width": size, "height": size,
        "units": units, "pixels_per_unit": scale, "static": True,
        "world_to_pixel": [[scale, 0.0, offset], [0.0, scale, offset]],
        "model": "u = s * x + o, v = s * y + o: world x is image right, world y is image down",
        "pixel_origin": "centre of the top-left pixel is (u, v) = (0, 0); u right, v down",
        "depth": None, "note": "a 2-D simulation: no 3-D scene, no extrinsics and no depth maps",
    }


def scene_camera(env: GoalEnv, size: int) -> tuple[dict[str, Any], str | None]:
    """(the camera description, the MuJoCo camera name for depth or None) of the env's renders."""
    from wmplan.envs.mujoco_env import MujocoGoalEnv

    if isinstance(env, MujocoGoalEnv):  # every MuJoCo env renders with its fixed camera "top"
        return mujoco_camera(env.model, env.data, "top", size, size), "top"
    return planar_camera(env, size), None


def env_step_seconds(env: GoalEnv) -> tuple[float, str]:
    """Simulated seconds per env step and how that number was found."""
    from wmplan.envs.deformable import TablePushEnv
    from wmplan.envs.pointmaze import FRAME_SKIP, PointMazeEnv
    from wmplan.envs.pusht import CONTROL_HZ, PushTEnv

    nominal = 1.0 / env.metadata["render_fps"]
    if isinstance(env, PointMazeEnv):
        return float(env.model.opt.timestep) * FRAME_SKIP, "physics: MuJoCo timestep x 5 substeps per env step"
    if isinstance(env, PushTEnv):
        return 1.0 / CONTROL_HZ, "physics: pymunk control rate 10 Hz"
    if isinstance(env, TablePushEnv):
        return nominal, "nominal (render_fps): a push takes a variable simulated time"
    return nominal, "nominal (render_fps): the env has no physical time"


# -- writing ----------------------------------------------------------------------------


def resize(frames: np.ndarray, size: int, method: str) -> np.ndarray:
    """uint8 [T, h, w, 3] to [T, size, size, 3] with PIL (pixel centres aligned)."""
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), RESIZE[method])) for f in frames])


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad an odd height / width by repeating the last row / column: H.264 (yuv420p) needs even sizes."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_sequence(folder: Path, arrays: np.ndarray, suffix: str) -> list[str]:
    """``folder/000000.<suffix> ...``; returns the paths relative to the export folder."""
    folder.mkdir(parents=True)
    names = []
    for i, array in enumerate(arrays):
        path = folder / f"{i:06d}{suffix}"
        if suffix == ".npy":
            np.save(path, array)
        else:
            iio.imwrite(path, array)
        names.append(f"{folder.name}/{path.name}")
    return names


def commit_folder(tmp: Path, out: Path, overwrite: bool) -> None:
    """fsync everything in ``tmp`` and rename it to ``out`` (replacing it when ``overwrite``)."""
    for path in tmp.rglob("*"):
        fsync_path(path)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    fsync_path(out.parent)
    shutil.rmtree(old, ignore_errors=True)


# -- the export -------------------------------------------------------------------------


def export_rollout(wm: WorldModel, out: str | Path, *, dataset: str | Path | None = None, clip: int | None = None,
                   clip_seed: int = 0, horizon: int = 8, context: int = 1, state: np.ndarray | None = None,
                   env_seed: int | None = None, actions: np.ndarray | None = None, seed: int = 0,
                   size: int | None = None, resize_method: str = "nearest", overwrite: bool = False,
                   checkpoint_path: str | Path | None = None) -> dict[str, Any]:
    """Roll ``wm`` out from a dataset clip or an env state and write the export folder ``out``.

    Returns the ``rollout.json`` record. ``actions`` default to the clip's recorded ones.
    """
    check_decodes(wm)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    if resize_method not in RESIZE:
        raise ValueError(f"resize must be one of {sorted(RESIZE)}, got {resize_method!r}")
    size = wm.resolution if size is None else int(size)
    cfg = env_config(wm)
    model_env, native_env = cfg.make().unwrapped, cfg.make(resolution=size).unwrapped
    try:
        start = pick_start(wm, model_env, dataset, clip, clip_seed, horizon, context, state, env_seed, actions)
        plan = check_actions(start["actions"] if actions is None else actions, wm, model_env.action_space.shape[0])
        predicted = predict_frames(wm, start, plan, seed)
        all_actions = np.concatenate([start["context_actions"], plan])
        native_env.reset(options={"state": start["state"]})  # MuJoCo camera poses exist after mj_forward
        camera, depth_camera = scene_camera(native_env, size)
        real, depth = replay(native_env, start["state"], all_actions, wm.frameskip, depth_camera)
        record = describe(wm, cfg, model_env, start, plan, seed, size, resize_method, camera, depth is not None,
                          len(predicted), checkpoint_path)
        write_export(out, resize(predicted, size, resize_method), real, depth, record, overwrite)
    finally:
        model_env.close()
        native_env.close()
    return record


def pick_start(wm, env, dataset, clip, clip_seed, horizon, context, state, env_seed, actions) -> dict[str, Any]:
    """The start: a dataset clip, or an env state (given, or sampled from ``env_seed``)."""
    if context < 1 or horizon < 1:
        raise ValueError(f"need context >= 1 and horizon >= 1, got {context}, {horizon}")
    if dataset is not None:
        if state is not None or env_seed is not None:
            raise ValueError("give either a dataset clip or an env start state, not both")
        # Only the context frames are needed from the clip when the actions are given.
        return dataset_start(wm, dataset, clip, horizon if actions is None else 0, context, clip_seed)
    if actions is None:
        raise ValueError("an env start has no recorded actions: give an action sequence (--actions)")
    if context != 1:
        raise ValueError("an env start gives one context frame: use context=1 or a dataset clip")
    if state is None and env_seed is None:
        env_seed = 0
    return env_start(env, wm, state, env_seed)


def describe(wm, cfg, env, start, plan, seed, size, resize_method, camera, has_depth, n_frames,
             checkpoint_path) -> dict[str, Any]:
    """The ``rollout.json`` record."""
    step_s, step_source = env_step_seconds(env)
    frame_s = step_s * wm.frameskip
    context = len(start["pixels"])
    return {
        "schema": SCHEMA, "wmplan_version": __version__,
        "env_id": wm.env_id, "env_config": cfg.name, "env_kwargs": cfg.env_kwargs,
        "frameskip": wm.frameskip, "env_step_seconds": step_s, "fps": round(1.0 / frame_s, 6),
        "fps_source": f"1 / (env_step_seconds x frameskip); env_step_seconds: {step_source}",
        "frame_times_s": [i * frame_s for i in range(n_frames)],
        "num_frames": n_frames, "context_frames": context, "predicted_frames": n_frames - context,
        "frames_note": (f"frames 0..{context - 1}: the codec's decoding of the real context frames; "
                        f"frames {context}..{n_frames - 1}: the world model's prediction"),
        "training_resolution": wm.resolution, "size": size,
        "resize": "none" if size == wm.resolution else f"{resize_method} (PIL, pixel centres aligned)",
        "actions": plan.tolist(), "context_actions": np.asarray(start["context_actions"]).tolist(),
        "actions_note": f"planner actions [H, frameskip x A]: action i takes frame {context - 1}+i to the next",
        "start": {**start["source"], "state": np.asarray(start["state"]).tolist()},
        "seed": seed, "seed_note": "the torch.Generator seed of the rollout's sampling noise",
        "sampler": dataclasses.asdict(wm.sampler),
        "checkpoint": {"path": None if checkpoint_path is None else str(checkpoint_path),
                       "sha256": wm.checkpoint_hash},
        "camera": camera,
        "depth": ({"available": True, "units": "metres", "dtype": "float32",
                   "kind": "z-depth: distance along the camera's view axis (not along the ray)",
                   "of": "the real trajectory (real/), not the prediction"} if has_depth else
                  {"available": False, "note": "2-D env: no depth"}),
        "files": {"frames": "frames/%06d.png", "video": "rollout.mp4", "real": "real/%06d.png",
                  "depth": "depth/%06d.npy" if has_depth else None},
    }


def write_export(out: Path, frames: np.ndarray, real: np.ndarray, depth: np.ndarray | None,
                 record: dict[str, Any], overwrite: bool) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_sequence(tmp / "frames", frames, ".png")
        write_sequence(tmp / "real", real, ".png")
        if depth is not None:
            write_sequence(tmp / "depth", depth, ".npy")
        video = even_frames(frames)
        save_video(tmp / "rollout.mp4", video, fps=record["fps"])
        record["video"] = {"codec": "libx264", "width": video.shape[2], "height": video.shape[1],
                           "padded": video.shape[1:3] != frames.shape[1:3], "fps": record["fps"]}
        write_json_atomic(tmp / "rollout.json", record)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"{out} appeared while exporting")
        commit_folder(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- CLI --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="wmplan-export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="world-model checkpoint (latest.ckpt, a .safetensors or pretrained:<name>)")
    p.add_argument("--out", required=True, help="export folder to write")
    p.add_argument("--dataset", help="start from a validation clip of this dataset")
    p.add_argument("--clip", type=int, help="clip index in the validation split (default: drawn from --clip-seed)")
    p.add_argument("--clip-seed", type=int, default=0, help="seed that picks the clip when --clip is not given")
    p.add_argument("--state", help=".npy env state to start from (instead of --dataset)")
    p.add_argument("--env-seed", type=int, help="sample the env start state with this seed (instead of --dataset)")
    p.add_argument("--actions", help=".npy actions [H, k*A] or [H*k, A] (default: the clip's recorded ones)")
    p.add_argument("--horizon", type=int, default=8, help="predicted frames with the clip's recorded actions")
    p.add_argument("--context", type=int, default=1, help="real context frames from the clip")
    p.add_argument("--seed", type=int, default=0, help="seed of the rollout's sampling noise")
    p.add_argument("--sampler-steps", type=int, default=1, help="denoising steps")
    p.add_argument("--schedule", default="full_sequence", choices=["full_sequence", "sequential", "pyramid"])
    p.add_argument("--size", type=int, help="output side in pixels (default: the training resolution)")
    p.add_argument("--resize", default="nearest", choices=sorted(RESIZE), help="how frames are remapped to --size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    wm = load_world_model(args.checkpoint, args.sampler_steps, args.schedule)
    env = env_config(wm).make()
    env_dim = env.action_space.shape[0]
    env.close()
    actions = None if args.actions is None else load_actions(args.actions, wm, env_dim)
    state = None if args.state is None else np.load(args.state, allow_pickle=False)
    record = export_rollout(
        wm, args.out, dataset=args.dataset, clip=args.clip, clip_seed=args.clip_seed, horizon=args.horizon,
        context=args.context, state=state, env_seed=args.env_seed, actions=actions, seed=args.seed, size=args.size,
        resize_method=args.resize, overwrite=args.overwrite, checkpoint_path=args.checkpoint,
    )
    print(f"wrote {record['num_frames']} frames at {record['fps']:g} fps to {args.out}")


if __name__ == "__main__":
    main()
