"""Vid2World causalization: causal outputs for NanoWM and diffusers video U-Nets, the transfer
kernels, extrapolation on linear inputs, per-frame conditioning, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UNet3DConditionModel, UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from wmplan.models.causalize import (
    TRANSFERS, CausalAttnProcessor, FrameConditionedUNet3D, FrameGroupNorm, causal_conv, causal_kernel, causalize,
    transfer_matrix,
)
from wmplan.models.nanowm import NanoWM, NanoWMConfig, nanowm_config

B, T, C, H, A = 1, 5, 4, 8, 3
CHANGED = 3  # frames >= CHANGED are perturbed; frames < CHANGED must not notice once causal
KINDS = ("nanowm", "unet3d", "svd")
UNET3D = dict(
    sample_size=H, in_channels=C, out_channels=C, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
    cross_attention_dim=8, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
)
SVD = dict(  # TemporalResnetBlock hard-codes GroupNorm(32, .): 32 channels at least
    sample_size=H, in_channels=C, out_channels=C, block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=8, num_attention_heads=(2, 4), addition_time_embed_dim=4,
    projection_class_embeddings_input_dim=12, num_frames=T,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
)
# k = 3 transfer matrices written out (row j: causal tap on frame t-2+j; column i: tap on t-1+i).
PAPER = {
    "shift": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    "masked": [[0, 0, 0], [1, 0, 0], [0, 1, 0]],
    "extrapolative": [[0, 0, -2 / 3], [1, 0, 1 / 3], [0, 1, 4 / 3]],
}


def randomize(model: nn.Module, std: float) -> nn.Module:
    """Replace every weight (zero-init ones too) so that every temporal path is live."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, std)
    return model.eval()


def nanowm_cfg(**overrides) -> NanoWMConfig:
    fields = {"latent_channels": C, "latent_size": H, "action_dim": A, "causal": False, "temporal_conv": 3}
    return nanowm_config("tiny", 2, **{**fields, **overrides})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model with random weights, written the way pretrained weights come (diffusers folders)."""
    root = tmp_path_factory.mktemp("models")
    torch.save(randomize(NanoWM(nanowm_cfg()), 0.2).state_dict(), root / "nanowm.pt")
    randomize(UNet3DConditionModel(**UNET3D), 0.3).save_pretrained(root / "unet3d")
    randomize(UNetSpatioTemporalConditionModel(**SVD), 0.3).save_pretrained(root / "svd")
    return root


def load(kind: str, root):
    if kind == "nanowm":
        model = NanoWM(nanowm_cfg())
        model.load_state_dict(torch.load(root / "nanowm.pt", weights_only=True))
        return model.eval()
    cls = UNet3DConditionModel if kind == "unet3d" else UNetSpatioTemporalConditionModel
    return cls.from_pretrained(root / kind).eval()


def run(kind: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x [B, T, C, H, W]`` -> the model's output with frames on axis 1, the other inputs fixed."""
    g = torch.Generator().manual_seed(1)
    context = torch.randn(B, 3, 8, generator=g)
    with torch.no_grad():
        if kind == "nanowm":
            return model(x, torch.rand(B, T, generator=g) * 1000, torch.randn(B, T, A, generator=g))[0]
        if kind == "unet3d":
            return model(x.transpose(1, 2), 500, context).sample.transpose(1, 2)
        return model(x, 500, context, torch.randn(B, 3, generator=g)).sample


def future_effect(kind: str, model: nn.Module) -> tuple[float, float]:
    """Largest output change on frames < CHANGED and on frame CHANGED when frames >= CHANGED change."""
    x = torch.randn(B, T, C, H, H, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, CHANGED:] += 1.0
    diff = (run(kind, model, changed) - run(kind, model, x)).abs()
    return diff[:, :CHANGED].max().item(), diff[:, CHANGED].max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_noncausal_models_leak_the_future(kind, saved):
    past, _ = future_effect(kind, load(kind, saved))
    assert past > 1e-3


@pytest.mark.parametrize("transfer", TRANSFERS)
@pytest.mark.parametrize("kind", KINDS)
def test_causalized_models_ignore_the_future(kind, transfer, saved):
    model = causalize(load(kind, saved), transfer)
    past, present = future_effect(kind, model)
    assert past == 0.0  # the future never enters: not even rounding differs
    assert present > 1e-3


def test_causalized_nanowm_is_a_causal_nanowm(saved):
    model = causalize(load("nanowm", saved), "extrapolative")
    assert model.cfg.causal and not model.supports_context_cache
    native = NanoWM(dataclasses.replace(model.cfg))  # built causal: left-padded conv, causal attention
    native.load_state_dict(model.state_dict())
    x = torch.randn(B, T, C, H, H)
    torch.testing.assert_close(run("nanowm", native.eval(), x), run("nanowm", model, x))
    with pytest.raises(ValueError, match="temporal_conv"):
        native.cache_context(x, torch.zeros(B, T), torch.zeros(B, T, A))


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_transfer_kernels_are_the_papers(transfer, saved):
    torch.testing.assert_close(transfer_matrix(3, transfer), torch.tensor(PAPER[transfer], dtype=torch.float64))
    unet = load("unet3d", saved)
    name = "down_blocks.0.temp_convs.0.conv1.2"  # a TemporalConvLayer's Conv3d, kernel (3, 1, 1)
    w = unet.get_submodule(name).weight.detach().clone()  # [out, in, 3, 1, 1]; taps on t-1, t, t+1
    causalize(unet, transfer)
    new = unet.get_submodule(name).weight.detach()  # taps on t-2, t-1, t
    zero = torch.zeros_like(w[:, :, 0])
    expected = {
        "shift": [w[:, :, 0], w[:, :, 1], w[:, :, 2]],
        "masked": [zero, w[:, :, 0], w[:, :, 1]],
        "extrapolative": [-2 / 3 * w[:, :, 2], w[:, :, 0] + w[:, :, 2] / 3, w[:, :, 1] + 4 / 3 * w[:, :, 2]],
    }[transfer]
    torch.testing.assert_close(new, torch.stack(expected, dim=2))
    assert unet.get_submodule(name).padding == (0, 0, 0)  # time is padded on the left in forward
    assert isinstance(unet.get_submodule("down_blocks.0.temp_convs.0.conv1.0"), FrameGroupNorm)
    assert isinstance(unet.transformer_in.transformer_blocks[0].attn1.processor, CausalAttnProcessor)
    assert unet.state_dict().keys() == load("unet3d", saved).state_dict().keys()  # saves like the original
    nanowm = load("nanowm", saved)
    conv = nanowm.blocks[1].temporal_conv.conv  # depthwise, weight [D, 1, 3]
    w = conv.weight.detach().clone()
    causalize(nanowm, transfer)
    paper = torch.tensor(PAPER[transfer], dtype=w.dtype)
    torch.testing.assert_close(conv.weight.detach(), torch.einsum("ji,dci->dcj", paper, w))


@pytest.mark.parametrize("k", [3, 5])
def test_extrapolative_transfer_is_exact_on_linear_inputs(k):
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 3, k, padding=k // 2).double()
    time = torch.arange(12, dtype=torch.float64)
    slope, offset = torch.randn(2, 1, 2, 1, dtype=torch.float64)
    linear = offset + slope * time  # [2, 2, 12]: batch, channels, time
    quadratic = linear + slope * time**2 / 10
    interior = slice(k - 1, 12 - k // 2)  # both windows inside the clip: no zero padding involved
    for transfer in TRANSFERS:
        causal = causal_conv(conv, transfer)
        with torch.no_grad():
            for signal, exact in ((linear, transfer == "extrapolative"), (quadratic, False)):
                ref, out = conv(signal)[..., interior], causal(signal)[..., interior]
                assert torch.allclose(out, ref, atol=1e-9) == exact, (transfer, signal)
    # the diffusers layout: a Conv3d with a (3, 1, 1) kernel over [B, C, F, H, W]
    conv3 = nn.Conv3d(2, 2, (3, 1, 1), padding=(1, 0, 0)).double()
    linear = linear[..., None, None].expand(2, 2, 12, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(causal_conv(conv3, "extrapolative")(linear)[:, :, 2:11], conv3(linear)[:, :, 2:11])


def test_frame_group_norm_and_causal_attention_match_the_originals():
    torch.manual_seed(0)
    norm = nn.GroupNorm(2, 4)
    frames = torch.randn(2, 4, 3, 5, 5)  # [B, C, F, H, W]
    per_frame = FrameGroupNorm(2, 4)
    per_frame.load_state_dict(norm.state_dict())
    torch.testing.assert_close(per_frame(frames)[:, :, 1], norm(frames[:, :, 1]))
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    x = torch.randn(6, 4, 8)  # [B*H*W, F, C]
    with torch.no_grad():
        full = attn(x)
        attn.set_processor(CausalAttnProcessor(attn.processor))
        causal = attn(x)
    torch.testing.assert_close(causal[:, -1], full[:, -1])  # the last frame sees every frame anyway
    assert not torch.allclose(causal[:, 0], full[:, 0])


def test_frame_conditioned_unet(saved):
    wrapper = FrameConditionedUNet3D(load("unet3d", saved), action_dim=A).eval()
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, C, T, H, H, generator=g), torch.randn(2, 3, 8, generator=g)
    levels, actions = torch.tensor([10.0, 700.0]), torch.randn(2, T, A, generator=g)
    with torch.no_grad():
        # one noise level per clip and the zero-init action MLP: exactly the wrapped U-Net, also at
        # a size its upsamplers must be told (7 -> 4 -> 8 would miss the 7-pixel skip)
        for clip in (sample, sample[..., :7, :6]):
            out = wrapper(clip, levels[:, None].expand(2, T), actions, context)
            torch.testing.assert_close(out, wrapper.unet(clip, levels, context).sample)
        randomize(wrapper.action_embed, 0.3)
        causalize(wrapper, "extrapolative")
        t = torch.rand(2, T, generator=g) * 1000
        ref = wrapper(sample, t, actions, context)
        for name, value in (("t", t), ("actions", actions)):
            changed = value.clone()
            changed[:, CHANGED] += 100.0 if name == "t" else 1.0
            inputs = {"t": t, "actions": actions, name: changed}
            out = wrapper(sample, inputs["t"], inputs["actions"], context)
            assert torch.equal(out[:, :, :CHANGED], ref[:, :, :CHANGED])  # later frames' t, a never leak back
            assert not torch.allclose(out[:, :, CHANGED], ref[:, :, CHANGED])  # a frame's own t, a act
    with pytest.raises(ValueError, match="t must be"):
        wrapper(sample, torch.zeros(B), actions, context)


def test_bad_inputs_raise_clear_errors(saved):
    with pytest.raises(ValueError, match="unknown transfer 'shifted'"):
        causalize(load("unet3d", saved), "shifted")
    with pytest.raises(ValueError, match="kernel size 4 .*'extrapolative'.* odd kernel"):
        transfer_matrix(4, "extrapolative")
    with pytest.raises(ValueError, match="not a symmetric 'same' conv"):
        causal_conv(nn.Conv3d(2, 2, (3, 1, 1)), "masked")  # no time padding: not the layout transferred
    with pytest.raises(ValueError, match="nothing temporal to causalize in Sequential"):
        causalize(nn.Sequential(nn.Conv2d(2, 2, 3), nn.GroupNorm(1, 2)))
    with pytest.raises(ValueError, match="causal already"):
        causalize(NanoWM(nanowm_cfg(causal=True)))
    unet = load("unet3d", saved)
    unet.down_blocks[1].temp_convs[0].conv2[3] = nn.Conv3d(16, 16, (4, 1, 1), padding=(2, 0, 0))
    with pytest.raises(ValueError, match="'extrapolative' transfer does not apply to kernel size 4"):
        causalize(unet, "extrapolative")
    assert not any(isinstance(m, FrameGroupNorm) for m in unet.modules())  # checked before any change
    unet = causalize(load("unet3d", saved), "masked")
    with pytest.raises(ValueError, match="causalized already"):
        causalize(unet, "masked")
    with pytest.raises(ValueError, match="temporal_conv must be 0 .* odd"):
        nanowm_cfg(temporal_conv=2)
    with pytest.raises(ValueError, match="wraps a UNet3DConditionModel"):
        FrameConditionedUNet3D(nn.Linear(2, 2), action_dim=A)


def test_temporal_conv_off_keeps_the_model():
    on = {k for k in NanoWM(nanowm_cfg()).state_dict() if "temporal_conv" in k}
    off = NanoWM(nanowm_cfg(temporal_conv=0)).state_dict()
    assert on and not any("temporal_conv" in k for k in off)
