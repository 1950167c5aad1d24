"""Latent codecs: frozen maps between env frames and the latents the world model sees.

Every codec takes frames `uint8 [B, T, H, W, 3]` and returns latents `float32
[B, T, C, h, w]`, already multiplied by its scaling factor so they have roughly unit
scale. Reconstruction codecs (`vae`, `trained_vae`, `pixels`) also decode; feature
codecs (`dino`, `vjepa`) are encode-only. Pretrained weights load from a local folder
only: nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

CODEC_NAMES = ("vae", "trained_vae", "pixels", "dino", "vjepa", "jepa")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey-level weights


@dataclass
class CodecConfig:
    name: str = "trained_vae"  # one of CODEC_NAMES
    path: str | None = None  # local weights folder (every codec but `pixels`)
    image_size: int = 64  # env frame side H = W
    pixel_size: int = 16  # pixels: side of the downsampled frame
    pixel_channels: int = 3  # pixels: 3 (RGB) or 1 (grey)
    encoder_size: int | None = None  # dino/vjepa: backbone input side; None = the model's own
    normalize: bool = False  # dino/vjepa: standardise each patch vector over channels
    dtype: str = "float32"  # float32 | bfloat16 | float16 (weights and compute)
    chunk_size: int = 64  # frames per forward pass, bounds memory

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise ValueError(f"unknown codec {self.name!r}; expected one of {CODEC_NAMES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown codec dtype {self.dtype!r}; expected one of {tuple(DTYPES)}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


class LatentCodec(nn.Module):
    """Frozen frames <-> latents map. Subclasses implement `_encode` and maybe `_decode`
    on float images `[n, 3, H, W]` in [0, 1]; this class validates, chunks and scales."""

    can_decode = False

    def __init__(self, cfg: CodecConfig, latent_shape: tuple[int, int, int], scaling_factor: float):
        super().__init__()
        self.cfg = cfg
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.scaling_factor = float(scaling_factor)
        self.dtype = DTYPES[cfg.dtype]

    def freeze(self) -> LatentCodec:
        self.to(self.dtype).requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> LatentCodec:
        # Frozen: a parent module's .train() must not switch dropout/norm layers on.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters(), torch.empty(0)).device

    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3] -> latents float32 [B, T, C, h, w] on the codec's device."""
        frames = self._check_frames(frames)
        B, T = frames.shape[:2]
        flat = frames.reshape(B * T, *frames.shape[2:])  # [N, H, W, 3]
        out = []
        for chunk in flat.split(self.cfg.chunk_size):
            x = chunk.to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 255.0  # [n, 3, H, W]
            out.append(self._encode(x).float())
        return torch.cat(out).reshape(B, T, *self.latent_shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, T, C, h, w] -> frames uint8 [B, T, H, W, 3] on the codec's device."""
        if not self.can_decode:
            raise NotImplementedError(f"codec {self.cfg.name!r} is encode-only and cannot decode latents")
        if latents.ndim != 5 or tuple(latents.shape[2:]) != self.latent_shape:
            raise ValueError(f"expected latents [B, T, {', '.join(map(str, self.latent_shape))}], got {list(latents.shape)}")
        B, T = latents.shape[:2]
        out = []
        for chunk in latents.reshape(B * T, *self.latent_shape).split(self.cfg.chunk_size):
            x = self._decode(chunk.to(self.device, self.dtype)).float()  # [n, 3, H, W] in [0, 1]
            out.append((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
        return torch.cat(out).reshape(B, T, *out[0].shape[1:])

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        frames = torch.as_tensor(frames)
        size = self.cfg.image_size
        if frames.dtype != torch.uint8:
            raise TypeError(f"codec {self.cfg.name!r} expects uint8 frames, got {frames.dtype}")
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (size, size, 3):
            raise ValueError(f"codec {self.cfg.name!r} expects frames [B, T, {size}, {size}, 3], got {list(frames.shape)}")
        return frames

    def architecture(self) -> dict | None:
        """The backbone's model config as plain JSON values (None: no backbone). Saved in
        world-model checkpoints, so the codec is rebuilt there without its weights folder."""
        return None

    def fingerprint(self) -> str:
        """Hash of everything that determines the latents: name, settings and weights."""
        settings = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in ("path", "chunk_size")}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for key, tensor in sorted(self.state_dict().items()):
            h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()


class VAECodec(LatentCodec):
    """diffusers AutoencoderKL; encodes to the posterior mean (deterministic)."""

    can_decode = True

    def __init__(self, cfg: CodecConfig, architecture: dict | None = None):
        from diffusers import AutoencoderKL

        if architecture is None:
            folder = _config_folder(cfg, "config.json")
            if _read_json(folder / "config.json").get("_class_name") != "AutoencoderKL":
                raise ValueError(f"{folder} is not a diffusers AutoencoderKL folder (config _class_name)")
            vae = _load(AutoencoderKL, folder, cfg)
        else:  # weights come from the world-model checkpoint's state dict
            folder = "the checkpoint"
            vae = AutoencoderKL.from_config(architecture)
        c = vae.config
        if cfg.name == "trained_vae" and c.sample_size != cfg.image_size:
            raise ValueError(f"trained VAE in {folder} was trained at {c.sample_size} px, but image_size is {cfg.image_size}")
        down = 2 ** (len(c.block_out_channels) - 1)
        if cfg.image_size % down:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by the VAE's downsampling factor {down}")
        shape = (c.latent_channels, cfg.image_size // down, cfg.image_size // down)
        super().__init__(cfg, shape, c.scaling_factor)
        self.shift_factor = float(c.shift_factor or 0.0)  # SD3/Flux-style VAEs shift before scaling
        self.vae = vae
        self.freeze()

    def architecture(self) -> dict:
        return _plain(dict(self.vae.config))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(x * 2 - 1).latent_dist.mean  # [n, C, h, w]
        return (mean - self.shift_factor) * self.scaling_factor

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.vae.decode(z / self.scaling_factor + self.shift_factor).sample + 1) / 2


class PixelCodec(LatentCodec):
    """Area-downsampled frames in [-1, 1]; decoding upsamples with nearest neighbour,
    the least-squares reconstruction from block means."""

    can_decode = True

    def __init__(self, cfg: CodecConfig):
        if cfg.pixel_channels not in (1, 3):
            raise ValueError(f"pixel_channels must be 1 or 3, got {cfg.pixel_channels}")
        if cfg.image_size % cfg.pixel_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of pixel_size {cfg.pixel_size}")
        super().__init__(cfg, (cfg.pixel_channels, cfg.pixel_size, cfg.pixel_size), 1.0)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.pixel_channels == 1:
            x = (x * self.luma).sum(1, keepdim=True)  # [n, 1, H, W]
        return F.interpolate(x, size=self.cfg.pixel_size, mode="area") * 2 - 1

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((z + 1) / 2, size=self.cfg.image_size, mode="nearest")
        return x.expand(-1, 3, -1, -1)


class PatchFeatureCodec(LatentCodec):
    """Encode-only ViT patch features [D, S/p, S/p]: resize, ImageNet-normalise, run the
    backbone, drop non-patch tokens, fold the patch grid back into a feature map."""

    model_types: tuple[str, ...] = ()

    def __init__(self, cfg: CodecConfig, architecture: dict | None = None):
        from transformers import AutoConfig, AutoModel

        if architecture is None:
            folder = _config_folder(cfg, "config.json")
            model_type = _read_json(folder / "config.json").get("model_type")
        else:  # weights come from the world-model checkpoint's state dict
            folder, model_type = "the checkpoint", architecture.get("model_type")
        if model_type not in self.model_types:
            raise ValueError(f"{folder} holds a {model_type!r} model; codec {cfg.name!r} needs one of {self.model_types}")
        if architecture is None:
            model = _load(AutoModel, folder, cfg)
        else:
            settings = {k: v for k, v in architecture.items() if k != "model_type"}
            model = AutoModel.from_config(AutoConfig.for_model(model_type, **settings))
        size = cfg.encoder_size or self._native_size(model.config)
        p = model.config.patch_size
        if size % p:
            raise ValueError(f"encoder_size {size} is not a multiple of the patch size {p}")
        super().__init__(cfg, (model.config.hidden_size, size // p, size // p), 1.0)
        self.size = size
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def architecture(self) -> dict:
        return _plain(self.model.config.to_dict())

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        # Antialiased resize has no bfloat16 kernel on CPU: resize in float32.
        x = F.interpolate(x.float(), size=self.size, mode="bilinear", antialias=True, align_corners=False)
        x = x.to(self.dtype)
        tokens = self._patch_tokens((x - self.mean) / self.std)  # [n, h*w, D]
        if self.cfg.normalize:
            tokens = F.layer_norm(tokens, tokens.shape[-1:])
        C, h, w = self.latent_shape
        return tokens.transpose(1, 2).reshape(-1, C, h, w)

    @staticmethod
    def _native_size(config) -> int:
        raise NotImplementedError

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DinoCodec(PatchFeatureCodec):
    """DINOv2 (optionally with registers) last-layer patch tokens, as in DINO-WM."""

    model_types = ("dinov2", "dinov2_with_registers")

    @staticmethod
    def _native_size(config) -> int:
        return config.image_size

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=x).last_hidden_state  # [n, 1 + R + h*w, D]
        return hidden[:, 1 + getattr(self.model.config, "num_register_tokens", 0) :]


class VJEPACodec(PatchFeatureCodec):
    """V-JEPA 2 encoder tokens, one frame at a time: the frame is repeated over a tubelet,
    as V-JEPA 2 does for images, so latents keep the clip's frame axis."""

    model_types = ("vjepa2",)

    @staticmethod
    def _native_size(config) -> int:
        return config.crop_size

    def __init__(self, cfg: CodecConfig, architecture: dict | None = None):
        super().__init__(cfg, architecture)
        if self.size != self.model.config.crop_size:
            # Its RoPE grid is fixed by crop_size; another input size would misplace tokens.
            raise ValueError(f"V-JEPA 2 needs encoder_size == crop_size {self.model.config.crop_size}, got {self.size}")

    def _patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        video = x.unsqueeze(1)  # [n, 1, 3, S, S]; the embedding repeats it to tubelet_size frames
        return self.model(pixel_values_videos=video, skip_predictor=True).last_hidden_state


class JEPACodec(LatentCodec):
    """Encoder of a JEPA trained by ``wmplan-train-jepa`` (``wmplan.models.jepa``): K tokens of
    D dims per frame as latents [D, sqrt K, sqrt K], times the folder's unit-variance scale."""

    def __init__(self, cfg: CodecConfig, architecture: dict | None = None):
        from wmplan.models.jepa import Encoder, JEPAConfig, load_jepa

        if architecture is None:
            if not cfg.path:
                raise ValueError("codec 'jepa' needs `path`, a folder written by wmplan-train-jepa")
            try:
                model, config = load_jepa(cfg.path)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"codec 'jepa': {e}") from None
            except ValueError as e:
                raise ValueError(f"codec 'jepa': {e}") from None
            folder, model_cfg, scale, encoder = cfg.path, model.cfg, float(config["scaling_factor"]), model.encoder
        else:  # weights come from the world-model checkpoint's state dict
            folder, model_cfg, scale = "the checkpoint", JEPAConfig(**architecture["model"]), float(architecture["scaling_factor"])
            encoder = Encoder(model_cfg)
        if model_cfg.image_size != cfg.image_size:
            raise ValueError(f"JEPA in {folder} was trained at {model_cfg.image_size} px, but image_size is {cfg.image_size}")
        super().__init__(cfg, model_cfg.latent_shape, scale)
        self.jepa_config = model_cfg
        self.encoder = encoder  # the predictor is not part of the codec
        self.freeze()

    def architecture(self) -> dict:
        return {"model": dataclasses.asdict(self.jepa_config), "scaling_factor": self.scaling_factor}

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        from wmplan.models.jepa import tokens_to_latents

        return tokens_to_latents(self.encoder(x)) * self.scaling_factor  # [n, D, r, r]


CODECS = {"vae": VAECodec, "trained_vae": VAECodec, "pixels": PixelCodec, "dino": DinoCodec, "vjepa": VJEPACodec,
          "jepa": JEPACodec}


def build_codec(cfg: CodecConfig | dict, architecture: dict | None = None) -> LatentCodec:
    """Build a frozen codec from its config (a `CodecConfig` or a dict of its fields).

    With ``architecture`` (a codec's ``architecture()``, as world-model checkpoints store it)
    the backbone is built from it with uninitialised weights, for a state dict to fill, and
    ``cfg.path`` is not read."""
    if not isinstance(cfg, CodecConfig):
        cfg = CodecConfig(**cfg)
    if architecture is None or cfg.name == "pixels":
        return CODECS[cfg.name](cfg)
    return CODECS[cfg.name](cfg, architecture)


def _plain(config: dict) -> dict:
    """A model config as JSON values only (tuples -> lists, dtypes -> names)."""
    return json.loads(json.dumps(config, default=str))


def _config_folder(cfg: CodecConfig, config_file: str) -> Path:
    if not cfg.path:
        raise ValueError(f"codec {cfg.name!r} needs `path`, a local folder with its weights")
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"codec {cfg.name!r}: weights folder {folder} does not exist")
    if not (folder / config_file).is_file():
        raise FileNotFoundError(f"codec {cfg.name!r}: {folder} has no {config_file}")
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read model config {path}: {e}") from e


def _load(cls, folder: Path, cfg: CodecConfig) -> nn.Module:
    """from_pretrained, offline, refusing to fill missing weights with random values."""
    try:
        # Loads in float32; LatentCodec.freeze() casts to cfg.dtype.
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise ValueError(f"codec {cfg.name!r}: cannot load weights from {folder}: {e}") from e
    missing = info.get("missing_keys") or []
    if missing:
        raise ValueError(f"codec {cfg.name!r}: {folder} lacks {len(missing)} weights, e.g. {sorted(missing)[:3]}")
    return model
