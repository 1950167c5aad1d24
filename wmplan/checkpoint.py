"""World-model checkpoints that load without running code.

A checkpoint is Lightning's dict (weights, optimizer, loops, EMA) plus ``wmplan_config`` (the
resolved training config), ``codec_architecture`` (the latent codec's model config, so its
weights in the state dict load without the codec's folder) and ``rng_state``. Every value is a
tensor or a plain container, so ``torch.load(weights_only=True)`` reads it: loading a shared
checkpoint cannot execute code.

Checkpoints written before this format stored numpy's RNG state as pickled numpy objects and
are refused by the safe loader; ``python -m wmplan.checkpoint upgrade PATH`` rewrites one in
place after an explicit opt-in (it allows exactly numpy's array types, nothing else).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from wmplan.atomic import atomic_path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PRETRAINED_FORMAT = "wmplan-pretrained-1"


def numpy_rng_state(state: tuple | None = None) -> dict[str, Any]:
    """numpy's global RNG state (or a ``np.random.get_state()`` tuple) as tensors and plain
    values, which load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state() if state is None else state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def set_numpy_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``numpy_rng_state`` saved."""
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"],
                         state["has_gauss"], state["cached_gaussian"]))


def _legacy_numpy_globals() -> list:
    """The numpy objects an old checkpoint's ``np.random.get_state()`` pickled, and only those."""
    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def resolve_path(world_model: str | Path) -> Path:
    """A checkpoint path, or ``pretrained:<name>`` for a model shipped in ``wmplan/pretrained``."""
    text = str(world_model)
    if not text.startswith("pretrained:"):
        return Path(world_model)
    name = text.removeprefix("pretrained:")
    path = PRETRAINED_DIR / f"{name}.safetensors"
    if not path.is_file():
        known = sorted(p.stem for p in PRETRAINED_DIR.glob("*.safetensors"))
        raise ValueError(f"no pretrained world model {name!r}; shipped: {known}")
    return path


def read_checkpoint(path: str | Path, allow_legacy: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Load a wmplan checkpoint safely (``weights_only=True``), with errors that name the file.

    ``path``: a training checkpoint (``.ckpt``), a pretrained file (``.safetensors``, see
    ``export_pretrained``) or ``pretrained:<name>``. ``allow_legacy``: also accept the numpy RNG
    arrays of pre-safe-format checkpoints (used by ``upgrade``); any other pickled object is
    still refused. ``mmap``: map tensors from the file instead of reading them (a cheap check).
    """
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world-model checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_pretrained(path)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as err:
            if not allow_legacy:
                culprit = _unsafe_global(err)
                if culprit.startswith("numpy"):
                    raise ValueError(
                        f"{path} was written by an older wmplan: it pickles numpy's RNG state ({culprit}), "
                        f"which the safe loader refuses. If you trust the file, convert it once with "
                        f"`python -m wmplan.checkpoint upgrade {path}`."
                    ) from None
                raise ValueError(f"{path} holds pickled Python objects ({culprit}) that loading would run; "
                                 f"refused: wmplan checkpoints never hold code") from None
            with torch.serialization.safe_globals(_legacy_numpy_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except ValueError:
        raise
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds pickled Python objects ({_unsafe_global(err)}) beyond an old "
                         f"checkpoint's numpy RNG state; refused: wmplan checkpoints never hold code") from None
    except Exception as err:  # torch raises several types for truncated / foreign files
        reason = str(err).split(". ")[0].strip()
        raise ValueError(f"cannot read checkpoint {path}: corrupt or not a torch file ({reason})") from None
    if not isinstance(ckpt, dict) or "wmplan_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a wmplan world-model checkpoint (no wmplan_config/state_dict)")
    return ckpt


def save_resume_point(path: str | Path, run: str, step: int, **state: Any) -> None:
    """A trainer's resume point (tensors and plain values only), replaced atomically: ``run``
    identifies the settings and data it belongs to, ``step`` the last step it holds."""
    with atomic_path(path) as tmp:
        torch.save({"run": run, "step": step, **state}, tmp)


def load_resume_point(path: str | Path, run: str, what: str) -> dict[str, Any] | None:
    """The resume point at ``path`` if it belongs to ``run``, else None (and says why): a run
    killed before its first resume point, or one with other settings, starts over. Loaded
    with ``weights_only``: no code runs."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: start over, say why
        print(f"ignoring unreadable resume point {path} ({err}); starting from step 0")
        return None
    if not isinstance(state, dict) or state.get("run") != run:
        print(f"resume point {path} belongs to other settings or data; starting from step 0")
        return None
    print(f"resuming {what} from step {state['step']} ({path})")
    return state


def _unsafe_global(err: Exception) -> str:
    """The global a refused pickle referenced, from torch's message (e.g. ``builtins.open``)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else "an object outside the allowed types"


def _read_pretrained(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"cannot read {path}: corrupt or not a safetensors file ({err})") from None
    if meta.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{path} is not a wmplan pretrained world model (metadata format "
                         f"{meta.get('format')!r}, expected {PRETRAINED_FORMAT!r})")
    return {"state_dict": state, "wmplan_config": json.loads(meta["wmplan_config"]),
            "codec_architecture": json.loads(meta["codec_architecture"]), "global_step": int(meta["global_step"]),
            "recipe": json.loads(meta["recipe"])}


def export_pretrained(checkpoint: str | Path, out: str | Path, recipe: dict[str, Any],
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write a checkpoint's EMA model and codec as a shippable safetensors file.

    Keeps what planning uses: the EMA weights (the raw training weights and optimizer state are
    dropped; loading fills the model from the EMA) and the codec, floats stored as ``dtype``;
    the config, codec architecture and ``recipe`` (the commands' overrides that made it) go
    into the metadata as JSON.
    """
    ckpt = read_checkpoint(checkpoint)
    state = {}
    for key, tensor in ckpt["state_dict"].items():
        if key.startswith("model."):
            continue
        tensor = tensor.detach().cpu().contiguous()
        big_float = tensor.is_floating_point() and tensor.numel() > 64  # small buffers stay exact
        state[key] = tensor.to(dtype) if big_float and key.startswith(("ema.module.", "codec.")) else tensor.clone()
    meta = {"format": PRETRAINED_FORMAT, "wmplan_config": json.dumps(ckpt["wmplan_config"]),
            "codec_architecture": json.dumps(ckpt.get("codec_architecture")),
            "global_step": str(int(ckpt["global_step"])), "recipe": json.dumps(recipe)}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(out)


def complete_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pretrained file's state dict with the raw model weights filled from the EMA's."""
    if any(key.startswith("model.") for key in state):
        return state
    ema = "ema.module."
    return {**{"model." + k[len(ema):]: v for k, v in state.items() if k.startswith(ema)}, **state}


def upgrade(path: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite a pre-safe-format checkpoint in the safe format (``out`` defaults to in place).

    Converts the numpy RNG state and records the codec architecture, which needs the codec's
    weights folder (``latent.path`` in the checkpoint's config) to be present once.
    """
    from omegaconf import OmegaConf

    from wmplan.models.codecs import CodecConfig, build_codec

    ckpt = read_checkpoint(path, allow_legacy=True)
    rng = ckpt.get("rng_state") or {}
    if isinstance(rng.get("numpy"), tuple):
        rng["numpy"] = numpy_rng_state(rng["numpy"])
    if "codec_architecture" not in ckpt:
        latent = OmegaConf.create(ckpt["wmplan_config"]).latent
        ckpt["codec_architecture"] = build_codec(CodecConfig(**latent)).architecture()
    out = Path(out or path)
    with atomic_path(out) as tmp:
        torch.save(ckpt, tmp)
    read_checkpoint(out)  # the result must load safely
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wmplan.checkpoint", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="rewrite a checkpoint from an older wmplan in the safe format "
                                        "(only for files you trust)")
    up.add_argument("path")
    up.add_argument("--out", default=None, help="write here instead of in place")
    args = parser.parse_args(argv)
    print(f"upgraded: {upgrade(args.path, args.out)}")


if __name__ == "__main__":
    main()
