"""Video metrics: Fréchet distance, rf-FVD / rf-FID (random-feature, not comparable to published
FVD/FID), FVD / FID / LPIPS from local weights (tiny random nets saved to tmp_path), and their
wiring into eval_world_model and the Lightning validation."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import train_config

import wmplan.train
from wmplan.diagnostics import prediction_quality, reference_sampler
from wmplan.rollout import WorldModel
from wmplan.video_metrics import (
    LPIPS,
    RF_LABEL,
    I3DFeatures,
    InceptionFeatures,
    RandomConvFeatures,
    VGG16Features,
    VideoMetrics,
    fid,
    frechet_distance,
    frechet_from_features,
    fvd,
    load_lpips,
    lpips,
    rf_fid,
    rf_fvd,
    rf_fvd_features,
)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def videos(seed: int, shape=(8, 3, 16, 16, 3)) -> torch.Tensor:
    """Smooth random uint8 videos [B, T, H, W, 3]: blobs, so that blur and noise change features."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(shape[0], shape[1], 3, 4, 4, generator=g)
    x = F.interpolate(low.flatten(0, 1), size=shape[2:4], mode="bilinear", align_corners=False)
    return (x.view(*shape[:2], 3, *shape[2:4]).permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8)


def noisy(v: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (v.float() + torch.randn(v.shape, generator=g) * sigma).clamp(0, 255).round().to(torch.uint8)


# -- Fréchet distance ------------------------------------------------------------------------
def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([1.0, 2.0, -1.0]), np.array([0.0, 0.5, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)
    # Same covariance, rotated (non-diagonal): only the means count.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    sigma = q @ np.diag(var1) @ q.T
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-8)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0, abs=1e-10)
    # Scalar Gaussians, and samples of two Gaussians approach the closed form.
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)
    rng = np.random.default_rng(1)
    a = rng.normal(mu1, np.sqrt(var1), size=(200_000, 3))
    b = rng.normal(mu2, np.sqrt(var2), size=(200_000, 3))
    assert frechet_from_features(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_near_singular_and_bad_shapes():
    rank1 = np.outer([1.0, 2.0], [1.0, 2.0])  # singular: sqrtm needs the eps offset or is exact
    value = frechet_distance([0.0, 0.0], rank1, [0.0, 0.0], np.zeros((2, 2)))
    assert math.isfinite(value) and value == pytest.approx(np.trace(rank1), rel=1e-3)
    few = np.random.default_rng(0).normal(size=(3, 10))  # N < D: singular covariances
    assert frechet_from_features(few, few) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance([0.0], [[1.0]], [0.0, 1.0], np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


# -- rf-FVD / rf-FID -----------------------------------------------------------------------------
def test_rf_fvd_identical_deterministic_and_ordered():
    v = videos(0)
    assert rf_fvd(v, v) == pytest.approx(0, abs=1e-7) and rf_fid(v, v) == pytest.approx(0, abs=1e-7)
    state = torch.get_rng_state()
    a, b = RandomConvFeatures(3, seed=5), RandomConvFeatures(3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the nets draw from a private generator
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    clips = v.permute(0, 4, 1, 2, 3).float() / 255
    assert torch.equal(a(clips), b(clips)) and not torch.equal(a(clips), RandomConvFeatures(3, seed=6)(clips))
    assert rf_fvd(v, noisy(v, 20)) == rf_fvd(v, noisy(v, 20))  # deterministic across calls
    assert torch.equal(rf_fvd_features(v, seed=1), rf_fvd_features(v.numpy(), seed=1))  # numpy in, same out
    assert torch.equal(rf_fvd_features(v), rf_fvd_features(v.float() / 255))  # uint8 == float [0, 1]
    for metric in (rf_fvd, rf_fid):
        small, large = metric(v, noisy(v, 10)), metric(v, noisy(v, 40))
        assert 0 < small < large
        shifted = [metric(v, (v.float() + s).clamp(0, 255).to(torch.uint8)) for s in (20, 60)]
        assert 0 < shifted[0] < shifted[1]
        assert metric(v, noisy(v, 40), seed=3) != large  # another seed, another (random-feature) scale
    # A time-reversed video has the same frames (rf-FID 0) but not the same motion (rf-FVD > 0).
    moving = torch.cat([videos(0)[:, :1], videos(0)[:, :1].roll(4, dims=2), videos(0)[:, :1].roll(8, dims=2)], dim=1)
    assert rf_fid(moving, moving.flip(1)) == pytest.approx(0, abs=1e-7)
    assert rf_fvd(moving, moving.flip(1)) > 1e-4


# -- tiny local "weights" ---------------------------------------------------------------------
class TinyI3D(nn.Module):
    """The i3d_torchscript.pt call convention on a random 3-D conv: [B, 3, T, H, W] in [0, 255]
    with rescale/resize/return_features, 400-d features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 255.0 * 2 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 24, 24), mode="trilinear", align_corners=False)
        f = self.fc(F.relu(self.conv(x)).mean((2, 3, 4)))
        return f if return_features else f.softmax(-1)


class InputStats(nn.Module):
    """A plain detector (no keyword arguments) that returns what it was given: min, max, size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([flat.amin(1), flat.amax(1), flat.mean(1), torch.full_like(flat[:, 0], x.shape[-1])], 1)


class TinyInception(nn.Module):
    """The inception-2015-12-05.pt convention: [N, 3, H, W] in [0, 255], return_features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x / 127.5 - 1, size=(32, 32), mode="bilinear", align_corners=False)
        return F.relu(self.conv(x)).mean((2, 3))


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = F.relu(self.a(x))
        return [h1, F.relu(self.b(h1))]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny random nets in the files a user points at: TorchScript I3D / Inception / LPIPS backbone
    (scripted and traced), lin weights in lpips's key layout, and junk."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("weights")
    paths = {name: d / f"{name}.pt" for name in ("i3d", "i3d_plain", "inception", "backbone", "lin", "junk")}
    torch.jit.script(TinyI3D()).save(str(paths["i3d"]))
    torch.jit.trace(InputStats(), torch.rand(2, 3, 3, 8, 8)).save(str(paths["i3d_plain"]))
    torch.jit.script(TinyInception()).save(str(paths["inception"]))
    torch.jit.script(TinyBackbone()).save(str(paths["backbone"]))
    torch.save({"lin0.model.1.weight": torch.rand(1, 8, 1, 1), "lin1.model.1.weight": torch.rand(1, 16, 1, 1)}, paths["lin"])
    paths["junk"].write_text("not weights")
    return paths


def test_i3d_torchscript_from_a_local_file(weights):
    i3d = I3DFeatures(weights["i3d"])
    assert i3d.styleganv  # forward takes rescale / resize / return_features
    v, w = videos(0), videos(1)
    clips = v.permute(0, 4, 1, 2, 3).float() / 255
    direct = torch.jit.load(str(weights["i3d"]))(clips * 255, rescale=True, resize=True, return_features=True)
    torch.testing.assert_close(i3d(clips), direct)
    assert i3d(clips).shape == (8, 400)
    assert fvd(v, v, i3d) == pytest.approx(0, abs=1e-6) and fvd(v, w, i3d) > 0
    plain = I3DFeatures(weights["i3d_plain"], size=40)  # no keywords: clips arrive in [-1, 1] at `size` px
    stats = plain(clips)
    assert not plain.styleganv and stats[:, 3].eq(40).all()
    assert stats[:, 0].min() >= -1 and stats[:, 1].max() <= 1 and stats[:, 0].min() < -0.5


def test_inception_torchscript_from_a_local_file(weights):
    inception = InceptionFeatures(weights["inception"])
    v, w = videos(0), videos(1)
    assert inception.stylegan and fid(v, v, inception) == pytest.approx(0, abs=1e-6) and fid(v, w, inception) > 0
    frames = v.flatten(0, 1).permute(0, 3, 1, 2).float()  # [N, 3, H, W] in [0, 255]
    torch.testing.assert_close(inception(frames / 255), torch.jit.load(str(weights["inception"]))(frames, return_features=True))


def test_lpips_from_local_weights(weights, tmp_path):
    net = load_lpips(weights["backbone"], weights["lin"])
    v = videos(0, shape=(4, 2, 16, 16, 3))
    d0, d1, d2 = lpips(v, v, net), lpips(v, noisy(v, 10), net), lpips(v, noisy(v, 50), net)
    assert d0.shape == (4, 2) and torch.all(d0.abs() < 1e-6)
    assert torch.all(d1 > 0) and torch.all(d2 > d1)
    torch.testing.assert_close(lpips(noisy(v, 10), v, net), d1)  # symmetric
    # By hand: one layer, unit lin weights: the mean over pixels of the squared unit-vector distance.
    one = LPIPS(nn.Identity().eval(), [torch.ones(3)])
    x, y = torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 5)
    fx, fy = [(z * 2 - 1 - one.shift) / one.scale for z in (x, y)]
    fx, fy = fx / fx.norm(dim=1, keepdim=True), fy / fy.norm(dim=1, keepdim=True)
    torch.testing.assert_close(one(x, y), ((fx - fy) ** 2).sum(1).mean((1, 2)))
    # The lpips package's VGG16 state dict layout (net.slice{k}.{i}, lin{k}.model.1), in one file.
    vgg = VGG16Features()
    slices = {i: k for k, (lo, hi) in enumerate(((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), 1) for i in range(lo, hi)}
    state = {f"net.slice{slices[int(key.split('.')[1])]}.{key.split('.', 1)[1]}": value
             for key, value in vgg.state_dict().items()}
    for k, c in enumerate((64, 128, 256, 512, 512)):
        state[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1)
    torch.save(state, tmp_path / "lpips_vgg.pth")
    full = load_lpips(tmp_path / "lpips_vgg.pth")
    assert all(torch.equal(a, b) for a, b in zip(full.backbone.state_dict().values(), vgg.state_dict().values()))
    small = v[:2, :1]
    assert lpips(small, small, full).abs().max() < 1e-6 and torch.all(lpips(small, noisy(small, 30), full) > 0)


def test_bad_weight_paths_are_named(weights, tmp_path):
    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    for kwargs in ({"i3d": missing}, {"inception": missing}, {"lpips": missing}):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            VideoMetrics(**kwargs)
    with pytest.raises(ValueError, match=f"{weights['junk']}.*not a TorchScript"):
        VideoMetrics(i3d=weights["junk"])
    with pytest.raises(ValueError, match="junk"):
        VideoMetrics(lpips=weights["junk"])
    with pytest.raises(ValueError, match="no lin"):
        load_lpips(weights["backbone"])  # a TorchScript backbone needs lin weights
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_lpips(weights["backbone"], missing)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no VGG16"):
        load_lpips(tmp_path / "other.pth")


def test_video_metrics_bundle(weights):
    v, w = videos(0), videos(2)
    m = VideoMetrics(weights["i3d"], weights["inception"], weights["backbone"], weights["lin"], rf_seed=0)
    out = m(v, w)
    assert set(out) == {"rf_fvd", "rf_fid", "fvd", "fid", "lpips"} and all(x > 0 for x in out.values())
    assert out["rf_fvd"] == pytest.approx(rf_fvd(v, w)) and out["rf_fid"] == pytest.approx(rf_fid(v, w))
    assert m(v, w, truth_features=m.features(w)) == out
    assert set(VideoMetrics()(v, w)) == {"rf_fvd", "rf_fid"}


# -- wiring: eval script and Lightning validation ---------------------------------------------
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_script_writes_video_metrics(checkpoint, wall_data, weights, tmp_path, capsys):
    script = load_script("eval_world_model")
    out = script.main(["--checkpoint", str(checkpoint), "--dataset", str(wall_data), "--clips", "4", "--steps", "2",
                       "--plans", "0", "--batch-size", "3", "--out", str(tmp_path / "eval.json"),
                       "--i3d", str(weights["i3d"]), "--inception", str(weights["inception"]),
                       "--lpips", str(weights["backbone"]), "--lpips-lin", str(weights["lin"])])
    printed = capsys.readouterr().out
    assert "rf-FVD" in printed and "not comparable to published FVD/FID" in printed and "LPIPS" in printed
    data = json.loads(out.read_text())
    video = data["video_metrics"]
    assert video["label"] == RF_LABEL and video["weights"]["i3d"] == str(weights["i3d"])
    for row in ("model", "copy_last", "reconstruction"):
        assert set(video[row]) == {"rf_fvd", "rf_fid", "fvd", "fid", "lpips"}
        assert all(math.isfinite(x) and x >= 0 for x in video[row].values())
    # One sampling pass serves both: the PSNR/SSIM equal diagnostics.prediction_quality's.
    wm = WorldModel.from_checkpoint(checkpoint)
    expected = prediction_quality(wm, wall_data, n_clips=4, sampler=reference_sampler(wm, steps=2), batch_size=3)
    assert data["prediction_quality"] == json.loads(json.dumps(expected))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        script.main(["--checkpoint", str(checkpoint), "--dataset", str(wall_data), "--clips", "2",
                     "--i3d", str(tmp_path / "missing.pt")])


def test_validation_logs_video_metrics(wall_data, weights, tmp_path, monkeypatch):
    seen: dict[str, float] = {}
    original = wmplan.train.build_trainer

    class Record(L.Callback):
        def on_validation_end(self, trainer, module):
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    def build(cfg, out_dir):
        trainer = original(cfg, out_dir)
        trainer.callbacks.append(Record())
        return trainer

    monkeypatch.setattr(wmplan.train, "build_trainer", build)
    cfg = train_config(wall_data, tmp_path / "run", 2, f"validation.metrics.i3d={weights['i3d']}",
                       f"validation.metrics.inception={weights['inception']}",
                       f"validation.metrics.lpips={weights['backbone']}", f"validation.metrics.lpips_lin={weights['lin']}")
    ckpt = wmplan.train.train(cfg)
    for key in ("rf_fvd", "rf_fid", "fvd", "fid", "lpips"):
        assert math.isfinite(seen[f"val/{key}"]) and math.isfinite(seen[f"val/{key}_copy_last"]), key
    # The metric nets stay out of the checkpoint.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert not any("video_metrics" in k or k.startswith("lpips") for k in state)

