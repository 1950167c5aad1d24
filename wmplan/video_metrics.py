"""Video metrics for predicted clips: Fréchet distances and LPIPS (docs/VIDEO_METRICS.md).

- ``frechet_distance``: between two Gaussians fitted to feature sets.
- rf-FVD / rf-FID: **random-feature FVD/FID, not comparable to published FVD/FID**. Features of a
  fixed, seeded, randomly initialised small 3-D (clips) / 2-D (frames) conv net: always available,
  offline, deterministic; random-network features track trained-network FID reasonably (arXiv
  2208.09218), so they rank models, but their scale is their own.
- FVD / FID from local weights: a Kinetics-400 I3D TorchScript (``i3d_torchscript.pt``, the
  StyleGAN-V convention) and an Inception TorchScript; comparable to published numbers only
  under the same protocol (clip length, resolution, sample count).
- LPIPS from local weights: VGG16-style backbone + learned 1x1 ``lin`` weights.

Inputs are the project's frames: videos uint8 ``[B, T, H, W, 3]`` (or float in [0, 1]).
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

RF_LABEL = "random-feature FVD/FID (rf-FVD / rf-FID), not comparable to published FVD/FID"
RF_SIZE = 64  # rf nets see every frame resized to 64x64


# -- Fréchet distance ------------------------------------------------------------------
def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, float64) of features [N, D]."""
    x = np.asarray(torch.as_tensor(features).detach().cpu().double())
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {list(x.shape)}")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet (2-Wasserstein) distance of two
    Gaussians. As pytorch-fid: a non-finite sqrtm (near-singular product) is retried with ``eps * I``
    added to both covariances; a tiny imaginary part (numerical) is dropped, a large one raises;
    rounding below 0 (identical sets) is clamped to 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched Gaussian statistics: {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s1)) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a large imaginary component {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)))  # >= 0 up to rounding


def _sqrtm(m: np.ndarray) -> np.ndarray:
    # Few samples (N < D) give singular covariances: expected here, so scipy's warning is muted.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(m)


def frechet_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance of the Gaussians fitted to features a [N, D] and b [M, D]."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# -- input conversion ---------------------------------------------------------------------
def to_unit(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 or float [0, 1] frames [..., H, W, 3] -> float32 in [0, 1]."""
    x = torch.as_tensor(frames)
    if x.shape[-1] != 3:
        raise ValueError(f"expected frames [..., H, W, 3], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"frames must be uint8 or float in [0, 1], got {x.dtype}")
    return x.float().clamp(0, 1)


def video_clips(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos [B, T, H, W, 3] -> clips [B, 3, T, H, W] float in [0, 1]."""
    x = to_unit(videos)
    if x.ndim != 5:
        raise ValueError(f"expected videos [B, T, H, W, 3], got {list(x.shape)}")
    return x.permute(0, 4, 1, 2, 3).contiguous()


def frame_images(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Videos [B, T, H, W, 3] (or images [N, H, W, 3]) -> images [B*T, 3, H, W] in [0, 1]."""
    x = to_unit(videos)
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).contiguous()


def _batched(net, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """net over chunks of x [N, ...] -> features [N, D] float32 on the CPU."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # fp32 features under bf16 training
        out = [net(x[i : i + batch_size].to(device)).flatten(1).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


# -- random-feature nets (rf-FVD / rf-FID) --------------------------------------------------
class RandomConvFeatures(nn.Module):
    """Random-feature extractor for rf-FVD (``dims=3``) / rf-FID (``dims=2``): not comparable to
    published FVD/FID. Four stride-2 3x3(x3) convs + ReLU, He-normal weights drawn from a private
    generator seeded with ``seed`` (the global RNG is untouched, torch's default initialisation
    plays no part), then global average pooling.

    Input: clips [B, 3, T, H, W] (dims 3) or images [N, 3, H, W] (dims 2) in [0, 1], resized to
    64x64 per frame. Output: [B, 256] features.
    """

    def __init__(self, dims: int = 3, seed: int = 0, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        self.dims = dims
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        stride = (1, 2, 2) if dims == 3 else 2  # time keeps its length: world-model clips are short
        generator = torch.Generator().manual_seed(seed)
        layers, c_in = [], 3
        for c_out in widths:
            layer = nn.utils.skip_init(conv, c_in, c_out, 3, stride=stride, padding=1)  # no global RNG draw
            with torch.no_grad():
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
                layer.bias.zero_()
            layers += [layer, nn.ReLU()]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.dims + 2:
            raise ValueError(f"expected {'[B, 3, T, H, W]' if self.dims == 3 else '[N, 3, H, W]'}, got {list(x.shape)}")
        size = (x.shape[2], RF_SIZE, RF_SIZE) if self.dims == 3 else (RF_SIZE, RF_SIZE)
        mode = "trilinear" if self.dims == 3 else "bilinear"
        x = F.interpolate(x.float(), size=size, mode=mode, align_corners=False) * 2 - 1
        return self.net(x).flatten(2).mean(-1)  # [B, C]: global average pool


_RF_NETS: dict[tuple[int, int], RandomConvFeatures] = {}


def random_features(dims: int, seed: int = 0) -> RandomConvFeatures:
    """The (cached) rf-FVD (dims 3) / rf-FID (dims 2) feature net for ``seed``."""
    key = (dims, seed)
    if key not in _RF_NETS:
        _RF_NETS[key] = RandomConvFeatures(dims, seed)
    return _RF_NETS[key]


def rf_fvd_features(videos, seed: int = 0, batch_size: int = 32) -> torch.Tensor:
    """rf-FVD (random-feature FVD, not comparable to published FVD) features [B, 256] of videos [B, T, H, W, 3]."""
    return _batched(random_features(3, seed), video_clips(videos), batch_size)


def rf_fid_features(videos, seed: int = 0, batch_size: int = 128) -> torch.Tensor:
    """rf-FID (random-feature FID, not comparable to published FID) features [B*T, 256], one per frame."""
    return _batched(random_features(2, seed), frame_images(videos), batch_size)


def rf_fvd(pred, truth, seed: int = 0) -> float:
    """rf-FVD: random-feature FVD, not comparable to published FVD. Videos [B, T, H, W, 3], B >= 2."""
    return frechet_from_features(rf_fvd_features(pred, seed), rf_fvd_features(truth, seed))


def rf_fid(pred, truth, seed: int = 0) -> float:
    """rf-FID: random-feature FID over all frames, not comparable to published FID."""
    return frechet_from_features(rf_fid_features(pred, seed), rf_fid_features(truth, seed))


# -- networks from local weights ------------------------------------------------------------
def _check_path(path: str | Path, what: str) -> Path:
    if path is None or str(path) == "":
        raise ValueError(f"no {what} weights path given")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    return path


def load_torchscript(path: str | Path, what: str) -> torch.jit.ScriptModule:
    """A TorchScript archive (``torch.jit.save``), in eval mode on the CPU."""
    path = _check_path(path, what)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{what} weights {path} are not a TorchScript archive (torch.jit.save): {e}") from e


def accepts(model: nn.Module, *names: str) -> bool:
    """Does model.forward take all these keyword arguments? (TorchScript schema or Python signature.)"""
    schema = getattr(model.forward, "schema", None)
    if schema is not None:
        params = {a.name for a in schema.arguments}
    else:
        try:
            params = set(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            return False
    return set(names) <= params


def _first_tensor(out) -> torch.Tensor:
    # Detectors return a tensor, a tuple (features, ...) or a dict with "features".
    if isinstance(out, dict):
        out = out.get("features", next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


class I3DFeatures(nn.Module):
    """FVD features from a local Kinetics-400 I3D TorchScript.

    A detector whose forward takes ``rescale``, ``resize``, ``return_features`` (the
    ``i3d_torchscript.pt`` of StyleGAN-V / fvd-comparison) gets clips [B, 3, T, H, W] in [0, 255]
    and is called with ``rescale=True, resize=True, return_features=True``: it maps to [-1, 1],
    resizes to 224 px itself and returns the 400-d pre-softmax features. Any other module gets
    clips resized here (bilinear, per frame) to 224 px in [-1, 1].
    Input: clips [B, 3, T, H, W] in [0, 1]. Output: [B, D].
    """

    def __init__(self, path: str | Path, size: int = 224):
        super().__init__()
        self.model = load_torchscript(path, "I3D")
        self.size = size
        self.styleganv = accepts(self.model, "rescale", "resize", "return_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.styleganv:  # values of uint8 frames, as that convention feeds its detector
            return _first_tensor(self.model(torch.round(x * 255), rescale=True, resize=True, return_features=True))
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)
        frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = frames.reshape(B, T, C, self.size, self.size).transpose(1, 2) * 2 - 1
        return _first_tensor(self.model(x))


class InceptionFeatures(nn.Module):
    """FID features from a local Inception-style TorchScript.

    A detector whose forward takes ``return_features`` (StyleGAN2-ADA's / clean-fid's
    ``inception-2015-12-05.pt``) gets images [N, 3, H, W] in [0, 255] and resizes to 299 px itself,
    called with ``return_features=True`` (2048-d pool features). Any other module gets images
    resized here to 299 px in [-1, 1]. Input: images [N, 3, H, W] in [0, 1]. Output: [N, D].
    """

    def __init__(self, path: str | Path, size: int = 299):
        super().__init__()
        self.model = load_torchscript(path, "Inception")
        self.size = size
        self.stylegan = accepts(self.model, "return_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stylegan:
            return _first_tensor(self.model(torch.round(x * 255), return_features=True))
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False) * 2 - 1
        return _first_tensor(self.model(x))


def fvd(pred, truth, i3d: I3DFeatures, batch_size: int = 16) -> float:
    """FVD of videos [B, T, H, W, 3] with local I3D weights; comparable to published FVD only under
    the same protocol (I3D convention, clip length, resolution, number of clips)."""
    a = _batched(i3d, video_clips(pred), batch_size)
    return frechet_from_features(a, _batched(i3d, video_clips(truth), batch_size))


def fid(pred, truth, inception: InceptionFeatures, batch_size: int = 64) -> float:
    """FID over all frames of videos [B, T, H, W, 3] with local Inception weights."""
    a = _batched(inception, frame_images(pred), batch_size)
    return frechet_from_features(a, _batched(inception, frame_images(truth), batch_size))


# -- LPIPS ---------------------------------------------------------------------------------
# torchvision's vgg16().features: conv widths ("M" = 2x2 max pool) and the ReLU indices whose
# outputs LPIPS compares (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer, on inputs in [-1, 1]
LPIPS_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """VGG16 conv stack with torchvision's ``features.{i}`` indices; returns the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                taps.append(x)
        return taps


def vgg16_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``features.{i}.*`` keys of a torchvision VGG16 state dict, or of the lpips package's
    ``net.slice{k}.{i}.*`` layout (its slices keep torchvision's indices)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features":
            out[key] = value
        elif parts[0] == "net" and parts[1].startswith("slice"):
            out[".".join(["features", *parts[2:]])] = value
    return out


def lin_weights(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The lpips package's ``lin{k}.model.1.weight`` [1, C, 1, 1] (or ``lin{k}.weight``) as [C] each, by k."""
    found = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0].startswith("lin") and parts[0][3:].isdigit() and parts[-1] == "weight":
            found[int(parts[0][3:])] = value.detach().float().flatten()
    return [found[k] for k in sorted(found)]


class LPIPS(nn.Module):
    """LPIPS (Zhang et al. 2018): sum over layers l of the spatial mean of
    sum_c w_l[c] (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2, f_l unit-normalised over channels.

    ``backbone``: images [N, 3, H, W] (after LPIPS's scaling layer) -> a feature map or a list of them.
    ``lin``: per-layer channel weights [C_l] (the learned 1x1 convs). Input: images in [0, 1].
    """

    def __init__(self, backbone: nn.Module, lin: list[torch.Tensor]):
        super().__init__()
        self.backbone = backbone.eval()
        self.lin = nn.ParameterList([nn.Parameter(w.float(), requires_grad=False) for w in lin])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = (self._taps((z * 2 - 1 - self.shift) / self.scale) for z in (x, y))
        if len(fx) != len(self.lin):
            raise ValueError(f"LPIPS backbone gives {len(fx)} feature maps, there are {len(self.lin)} lin weights")
        total = torch.zeros(len(x), device=x.device)
        for a, b, w in zip(fx, fy, self.lin):
            if a.shape[1] != len(w):
                raise ValueError(f"LPIPS lin weights have {len(w)} channels, the feature map {a.shape[1]}")
            a, b = _unit(a.float()), _unit(b.float())
            total = total + ((a - b) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
        return total  # [N]


    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.backbone(x)
        return [out] if isinstance(out, torch.Tensor) else list(out)  # one map or a list of maps


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)  # as lpips.normalize_tensor


def load_lpips(path: str | Path, lin_path: str | Path | None = None) -> LPIPS:
    """LPIPS from local files.

    ``path``: a state dict (``torch.save``) with VGG16 weights in torchvision (``features.{i}``) or
    lpips-package (``net.slice{k}.{i}``) layout, usually with the ``lin{k}`` weights too (the
    lpips package's ``LPIPS(net="vgg").state_dict()``); or a TorchScript backbone that maps scaled
    images to a list of feature maps. ``lin_path``: a state dict with the ``lin{k}`` weights
    (e.g. lpips's ``weights/v0.1/vgg.pth``), needed when ``path`` has none.
    """
    path = _check_path(path, "LPIPS")
    state = _load_state(path) if not _is_torchscript(path) else None
    if state is None:
        backbone, lin = load_torchscript(path, "LPIPS backbone"), []
    else:
        vgg = vgg16_state(state)
        if not vgg:
            raise ValueError(f"LPIPS weights {path}: no VGG16 'features.*' or 'net.slice*' keys")
        backbone = VGG16Features()
        backbone.load_state_dict(vgg)
        lin = lin_weights(state)
    if lin_path is not None:
        lin_file = _check_path(lin_path, "LPIPS lin")
        lin = lin_weights(_load_state(lin_file) or {})
    if not lin:
        raise ValueError(f"LPIPS: no lin{{k}} weights in {path}" + ("" if lin_path is None else f" or {lin_path}"))
    return LPIPS(backbone, lin)


def _is_torchscript(path: Path) -> bool:
    try:
        torch.jit.load(str(path), map_location="cpu")
        return True
    except (RuntimeError, ValueError):
        return False


def _load_state(path: Path) -> dict[str, torch.Tensor] | None:
    """A tensor state dict saved with torch.save, loaded safely (weights_only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors come in many types
        raise ValueError(f"cannot read weights {path} as a state dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights {path} hold a {type(state).__name__}, not a state dict")
    return state


def lpips(pred, truth, net: LPIPS, batch_size: int = 64) -> torch.Tensor:
    """LPIPS per frame [B, T] of videos [B, T, H, W, 3] (or per image [N] of images [N, H, W, 3])."""
    x, y = frame_images(pred), frame_images(truth)
    if x.shape != y.shape:
        raise ValueError(f"pred and truth shapes differ: {list(x.shape)} vs {list(y.shape)}")
    device = net.shift.device
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        d = torch.cat([net(x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)).cpu()
                       for i in range(0, len(x), batch_size)])
    return d.reshape(torch.as_tensor(pred).shape[:-3])


# -- configured bundle -----------------------------------------------------------------------
CLIP_METRICS = ("rf_fvd", "fvd")  # nets over clips [B, 3, T, H, W]; the others see frames [B*T, 3, H, W]


class VideoMetrics:
    """The metrics a run is configured for: rf-FVD / rf-FID always (random-feature, not comparable
    to published FVD/FID), FVD / FID / LPIPS when their local weight paths are given."""

    def __init__(self, i3d: str | Path | None = None, inception: str | Path | None = None,
                 lpips: str | Path | None = None, lpips_lin: str | Path | None = None, rf_seed: int = 0):
        self.rf_seed = rf_seed
        self.nets: dict[str, nn.Module] = {"rf_fvd": RandomConvFeatures(3, rf_seed), "rf_fid": RandomConvFeatures(2, rf_seed)}
        if i3d:
            self.nets["fvd"] = I3DFeatures(i3d)
        if inception:
            self.nets["fid"] = InceptionFeatures(inception)
        self.lpips = load_lpips(lpips, lpips_lin) if lpips else None

    def to(self, device: torch.device | str) -> "VideoMetrics":
        for net in self.nets.values():
            net.to(device)
        if self.lpips is not None:
            self.lpips.to(device)
        return self

    def features(self, videos) -> dict[str, torch.Tensor]:
        """Per-set features of videos [B, T, H, W, 3]: rf_fvd [B, D], rf_fid [B*T, D] (+ fvd [B, D], fid [B*T, D])."""
        clips, frames = video_clips(videos), frame_images(videos)
        return {key: _batched(net, clips if key in CLIP_METRICS else frames, 16 if key in CLIP_METRICS else 64)
                for key, net in self.nets.items()}

    def lpips_per_frame(self, pred, truth) -> torch.Tensor | None:
        """LPIPS [B, T] of pred vs truth videos, None when not configured."""
        return None if self.lpips is None else lpips(pred, truth, self.lpips)

    def __call__(self, pred, truth, truth_features: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """rf_fvd, rf_fid (+ fvd, fid, lpips when configured) of pred vs truth videos [B, T, H, W, 3].
        ``truth_features``: ``self.features(truth)``, when several predictions share one truth."""
        fp, ft = self.features(pred), truth_features or self.features(truth)
        out = {key: frechet_from_features(fp[key], ft[key]) for key in fp}
        if self.lpips is not None:
            out["lpips"] = float(self.lpips_per_frame(pred, truth).mean())
        return out
