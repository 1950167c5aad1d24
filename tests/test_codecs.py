"""Codecs built from small random-weight models saved to disk and loaded back through
build_codec, the same path a real checkpoint folder takes; plus VAE training."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from wmplan.config_dir import CONFIG_DIR
from wmplan.models.codecs import IMAGENET_MEAN, IMAGENET_STD, CodecConfig, build_codec
from wmplan.train_vae import VAETrainConfig, train_vae

SIZE = 32
CONFIGS = CONFIG_DIR


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    from diffusers import AutoencoderKL
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    from transformers import VJEPA2Config, VJEPA2Model

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), norm_num_groups=8, latent_channels=4, sample_size=SIZE,
        scaling_factor=0.5,
    )
    vae.save_pretrained(root / "vae")
    vit = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8)
    Dinov2Model(Dinov2Config(image_size=SIZE, **vit)).save_pretrained(root / "dino")
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(image_size=SIZE, num_register_tokens=2, **vit)).save_pretrained(
        root / "dino_reg"
    )
    VJEPA2Model(
        VJEPA2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, crop_size=SIZE, patch_size=8,
            frames_per_clip=4, tubelet_size=2, pred_hidden_size=32, pred_num_hidden_layers=1,
            pred_num_attention_heads=2, num_pooler_layers=1,
        )
    ).save_pretrained(root / "vjepa")
    return {p.name: p for p in root.iterdir()}


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


def _codec(name, path=None, **kw):
    return build_codec(CodecConfig(name=name, path=None if path is None else str(path), image_size=SIZE, **kw))


CASES = [
    ("vae", "vae", (4, 8, 8), True),
    ("trained_vae", "vae", (4, 8, 8), True),
    ("pixels", None, (3, 8, 8), True),
    ("dino", "dino", (32, 4, 4), False),
    ("dino", "dino_reg", (32, 4, 4), False),
    ("vjepa", "vjepa", (32, 4, 4), False),
]


@pytest.mark.parametrize(("name", "folder", "shape", "can_decode"), CASES)
def test_codec_contract(weights, frames, name, folder, shape, can_decode):
    path = weights[folder] if folder else None
    codec = _codec(name, path, pixel_size=8)
    assert codec.latent_shape == shape and codec.can_decode == can_decode
    z = codec.encode(frames)
    assert z.shape == (2, 3, *shape) and z.dtype == torch.float32 and torch.isfinite(z).all()
    torch.testing.assert_close(_codec(name, path, pixel_size=8, chunk_size=4).encode(frames), z)  # chunking
    assert not any(p.requires_grad for p in codec.parameters())
    assert not codec.train().training  # stays frozen under a parent's .train()
    if can_decode:
        out = codec.decode(z)
        assert out.shape == frames.shape and out.dtype == torch.uint8
    else:
        with pytest.raises(NotImplementedError, match="encode-only"):
            codec.decode(z)


@pytest.mark.parametrize(("name", "folder", "shape", "can_decode"), CASES)
def test_codec_rebuilds_from_its_architecture_without_its_folder(weights, frames, tmp_path, name, folder, shape,
                                                                 can_decode):
    """What a world-model checkpoint does: architecture + state dict, no weights folder."""
    codec = _codec(name, weights[folder] if folder else None, pixel_size=8)
    architecture = codec.architecture()
    assert (architecture is None) == (name == "pixels")
    assert torch.load(_saved(architecture, tmp_path), weights_only=True) == architecture  # plain values only
    rebuilt = _codec(name, tmp_path / "gone", pixel_size=8) if name == "pixels" else build_codec(
        CodecConfig(name=name, path=str(tmp_path / "gone"), image_size=SIZE), architecture)
    rebuilt.load_state_dict(codec.state_dict())
    torch.testing.assert_close(rebuilt.encode(frames), codec.encode(frames), rtol=0, atol=0)


def _saved(obj, folder):
    torch.save(obj, folder / "obj.pt")
    return folder / "obj.pt"


def test_vae_encodes_scaled_posterior_mean_and_decodes(weights, frames):
    from diffusers import AutoencoderKL

    codec = _codec("vae", weights["vae"])
    assert codec.scaling_factor == 0.5  # read from the folder's config
    vae = AutoencoderKL.from_pretrained(weights["vae"])
    x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        image = vae.decode(mean).sample
    torch.testing.assert_close(codec.encode(frames).flatten(0, 1), mean * 0.5)
    expected = ((image.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).reshape(frames.shape)
    assert (codec.decode(codec.encode(frames)).int() - expected.int()).abs().max() <= 1


def test_pixel_codec_is_area_average_and_inverts_block_images():
    codec = _codec("pixels", pixel_size=8)
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (1, 2, 8, 8, 3), dtype=torch.uint8, generator=g)
    frames = blocks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # constant 4x4 blocks
    z = codec.encode(frames)
    torch.testing.assert_close(z, blocks.permute(0, 1, 4, 2, 3).float() / 127.5 - 1)
    assert torch.equal(codec.decode(z), frames)
    grey = _codec("pixels", pixel_size=8, pixel_channels=1)
    luma = (frames.float() * torch.tensor([0.299, 0.587, 0.114])).sum(-1) / 255  # [1, 2, 32, 32]
    expected = F.avg_pool2d(luma, 4) * 2 - 1
    torch.testing.assert_close(grey.encode(frames)[:, :, 0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("folder", ["dino", "dino_reg"])
def test_dino_features_are_patch_tokens(weights, frames, folder):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(weights[folder]).eval()
    x = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=48, mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model(pixel_values=x).last_hidden_state[:, 1 + model.config.num_register_tokens if folder == "dino_reg" else 1 :]
    expected = tokens.transpose(1, 2).reshape(6, 32, 6, 6)
    codec = _codec("dino", weights[folder], encoder_size=48)
    torch.testing.assert_close(codec.encode(frames).flatten(0, 1), expected, atol=1e-5, rtol=1e-5)
    z = _codec("dino", weights[folder], encoder_size=48, normalize=True).encode(frames)
    torch.testing.assert_close(z.mean(2), torch.zeros(2, 3, 6, 6), atol=1e-5, rtol=0)


def test_vjepa_features_are_per_frame(weights, frames):
    codec = _codec("vjepa", weights["vjepa"])
    z = codec.encode(frames)
    single = codec.encode(frames[1:, 2:])  # a frame's latent ignores the rest of its clip
    torch.testing.assert_close(single[0, 0], z[1, 2], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="crop_size"):
        _codec("vjepa", weights["vjepa"], encoder_size=48)


def test_fingerprint_tracks_settings_and_weights(weights, tmp_path):
    a = _codec("dino", weights["dino"]).fingerprint()
    assert a == _codec("dino", weights["dino"], chunk_size=3).fingerprint()
    assert a != _codec("dino", weights["dino"], normalize=True).fingerprint()
    state = load_file(weights["dino"] / "model.safetensors")
    state = {k: v + 1e-3 if k.endswith("layernorm.bias") else v for k, v in state.items()}
    other = tmp_path / "dino"
    other.mkdir()
    (other / "config.json").write_text((weights["dino"] / "config.json").read_text())
    save_file(state, other / "model.safetensors", metadata={"format": "pt"})
    assert a != _codec("dino", other).fingerprint()


def test_bad_frames_are_named(frames):
    codec = _codec("pixels", pixel_size=8)
    with pytest.raises(TypeError, match="uint8"):
        codec.encode(frames.float())
    with pytest.raises(ValueError, match=r"\[B, T, 32, 32, 3\]"):
        codec.encode(frames[0])
    with pytest.raises(ValueError, match=r"\[B, T, 32, 32, 3\]"):
        codec.encode(frames[..., :16, :])
    with pytest.raises(ValueError, match="expected latents"):
        codec.decode(torch.zeros(1, 1, 3, 4, 4))


def test_bad_folders_are_named(weights, tmp_path):
    with pytest.raises(ValueError, match="unknown codec"):
        CodecConfig(name="sd3")
    with pytest.raises(ValueError, match="needs `path`"):
        _codec("vae")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _codec("vae", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        _codec("dino", tmp_path / "empty")
    with pytest.raises(ValueError, match="not a diffusers AutoencoderKL"):
        _codec("vae", weights["dino"])
    with pytest.raises(ValueError, match="'dinov2'.*needs one of \\('vjepa2',\\)"):
        _codec("vjepa", weights["dino"])
    with pytest.raises(ValueError, match="trained at 32 px"):
        build_codec(CodecConfig(name="trained_vae", path=str(weights["vae"]), image_size=64))


def _copy_with_weights(src: Path, dst: Path, weights_bytes: bytes) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    name = next(p.name for p in src.iterdir() if p.suffix == ".safetensors")
    (dst / name).write_bytes(weights_bytes)
    return dst


@pytest.mark.parametrize(("name", "folder"), [("vae", "vae"), ("dino", "dino")])
def test_corrupt_or_incomplete_weights_are_refused(weights, tmp_path, name, folder):
    src = weights[folder]
    file = next(p for p in src.iterdir() if p.suffix == ".safetensors")
    corrupt = _copy_with_weights(src, tmp_path / "corrupt", file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="cannot load weights"):
        _codec(name, corrupt)
    state = load_file(file)
    state.pop(sorted(state)[0])
    incomplete = tmp_path / "incomplete"
    _copy_with_weights(src, incomplete, b"")
    save_file(state, incomplete / file.name, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks 1 weights|cannot load weights"):
        _codec(name, incomplete)


def _blobs(n: int, size: int, seed: int) -> np.ndarray:
    """Frames of one soft coloured disc on a grey background, uint8 [n, size, size, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centre = rng.uniform(4, size - 4, (n, 2))
    d2 = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2  # [n, size, size]
    mask = np.exp(-d2 / 18.0)[..., None]
    colour = rng.uniform(0, 255, (n, 1, 1, 3))
    return (100 * (1 - mask) + colour * mask).astype(np.uint8)


def test_train_vae_saves_a_loadable_unit_variance_codec(tmp_path):
    frames = _blobs(96, 16, seed=0)
    cfg = VAETrainConfig(
        block_out_channels=(8, 16), norm_num_groups=8, steps=150, batch_size=16, lr=3e-3, recon_loss="mse",
        val_fraction=0.25, scale_frames=1000, log_every=1000,
    )
    out = tmp_path / "vae"
    result = train_vae(frames, out, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temporary folders left
    assert json.loads((out / "wmplan_vae.json").read_text())["psnr"] == result["psnr"]
    codec = build_codec(CodecConfig(name="trained_vae", path=str(out), image_size=16))
    assert codec.latent_shape == (4, 8, 8) and codec.scaling_factor == pytest.approx(result["scaling_factor"])
    train_frames = frames[np.random.default_rng(cfg.seed).permutation(96)[24:]]  # the split train_vae made
    assert codec.encode(torch.from_numpy(train_frames)[None]).std().item() == pytest.approx(1.0, abs=1e-3)
    untrained = train_vae(frames, tmp_path / "untrained", dataclasses.replace(cfg, steps=0))
    assert result["psnr"] > untrained["psnr"] + 5 and result["ssim"] > untrained["ssim"] + 0.3, (result, untrained)


def test_train_vae_is_reproducible_and_replaces_atomically(tmp_path):
    frames = _blobs(24, 16, seed=1)
    cfg = VAETrainConfig(block_out_channels=(8, 16), norm_num_groups=8, steps=3, batch_size=4, log_every=1000)
    first = train_vae(frames, tmp_path / "a", cfg)
    second = train_vae(frames, tmp_path / "a", cfg)  # overwrites the existing folder
    assert first["psnr"] == second["psnr"] and first["scaling_factor"] == second["scaling_factor"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(ValueError, match="square uint8 frames"):
        train_vae(frames.astype(np.float32), tmp_path / "b", cfg)
    # The switch reaches the training step. Explicit on both sides: `auto` resolves by a speed
    # probe, which a loaded machine can tip to fp32.
    bf16 = train_vae(frames, tmp_path / "c", dataclasses.replace(cfg, precision="bf16"))
    fp32 = train_vae(frames, tmp_path / "d", dataclasses.replace(cfg, precision="32"))
    assert fp32["psnr"] != bf16["psnr"]
    with pytest.raises(ValueError, match="precision"):
        VAETrainConfig(precision="fp16")


KILL_VAE_TRAINING = """
import os, signal, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[2])
from test_codecs import _blobs, small_vae_training
from wmplan.train_vae import train_vae

save = torch.save
def die_at_step_4(obj, path, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 4:  # killed while writing the step-4 resume point
        os.kill(os.getpid(), signal.SIGKILL)
    save(obj, path, *args, **kwargs)
torch.save = die_at_step_4
train_vae(_blobs(24, 16, seed=1), sys.argv[1], small_vae_training())
"""


def small_vae_training(**kw) -> VAETrainConfig:
    return VAETrainConfig(block_out_channels=(8, 16), norm_num_groups=8, steps=6, batch_size=4, log_every=1000,
                          checkpoint_every=2, **kw)


def test_train_vae_killed_after_a_resume_point_resumes_bit_exactly(tmp_path):
    import subprocess
    import sys

    full = train_vae(_blobs(24, 16, seed=1), tmp_path / "full", small_vae_training())
    out = tmp_path / "killed" / "vae"
    run = subprocess.run([sys.executable, "-c", KILL_VAE_TRAINING, str(out), str(Path(__file__).parent)],
                         capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    resume = out.with_name(".vae.resume.pt")
    assert not out.exists() and torch.load(resume, weights_only=True)["step"] == 2  # the last complete one
    resumed = train_vae(_blobs(24, 16, seed=1), out, small_vae_training())
    assert not resume.exists()  # removed once the model is saved
    a = load_file(tmp_path / "full" / "diffusion_pytorch_model.safetensors")
    b = load_file(out / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["psnr"] == full["psnr"] and resumed["scaling_factor"] == full["scaling_factor"]
    # A resume point from other settings is not used.
    train_vae(_blobs(24, 16, seed=1), tmp_path / "other", small_vae_training())
    torch.save({"run": "another", "step": 4}, tmp_path / ".other.resume.pt")
    again = train_vae(_blobs(24, 16, seed=1), tmp_path / "other", small_vae_training())
    assert again["psnr"] == full["psnr"]


def test_configs_match_their_dataclasses():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train_vae", overrides=["env=wall"])
        assert VAETrainConfig(**OmegaConf.to_container(cfg.train, resolve=True)).block_out_channels == VAETrainConfig().block_out_channels
        for name in ("vae", "trained_vae", "pixels", "dino", "vjepa"):
            latent = compose(config_name="train_vae", overrides=[f"+latent={name}"]).latent
            codec_cfg = CodecConfig(**OmegaConf.to_container(latent, resolve=True))
            assert codec_cfg.name == name and codec_cfg.image_size == 64
    assert codec_cfg.path is None or codec_cfg.path.startswith("/")  # unset env var -> null


def test_train_vae_reads_a_clip_dataset(tmp_path):
    from wmplan.data.collect import collect
    from wmplan.envs.config import load_env_config

    path = collect(load_env_config("wall"), episodes=3, policy="random", seed=0, out_dir=tmp_path / "wall", progress=False)
    cfg = VAETrainConfig(block_out_channels=(8, 16), norm_num_groups=8, steps=2, batch_size=4, max_train_frames=40, max_val_frames=6)
    result = train_vae(path, tmp_path / "vae", cfg)
    assert result["train_frames"] == 40 and result["val_frames"] == 6
    assert build_codec(CodecConfig(name="trained_vae", path=str(tmp_path / "vae"), image_size=64)).latent_shape == (4, 32, 32)
