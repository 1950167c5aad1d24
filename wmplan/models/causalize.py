"""Vid2World causalization: rewrite a loaded video model so frame t never sees frames after t.

``causalize(model, transfer)`` works in place on a non-causal ``NanoWM`` (built with a temporal
conv) or on any module holding the temporal layers of diffusers' video U-Nets
(``UNet3DConditionModel``, ``UNetSpatioTemporalConditionModel``, or the wrapper below):

- **Temporal attention** gets a causal mask (query frame t sees key frames <= t). No weight
  changes: attention adapts to the shorter receptive field by itself.
- **Temporal convolutions** (odd kernel k along time, symmetric "same" padding, so m = k // 2
  taps read future frames) become causal convolutions: padded by k - 1 frames on the left only,
  so the output length is unchanged and causal tap j reads frame t - (k - 1) + j. The weights
  come from one of three transfers (``transfer_matrix``): ``shift`` keeps the kernel as it is
  (every tap moves m frames into the past), ``masked`` keeps the past and present taps at their
  frames and drops the future ones, ``extrapolative`` (the paper's choice) also keeps them and
  replaces each future frame t + s by the OLS line through frames t - (k - 1) .. t evaluated at
  t + s, folding those coefficients into the past taps. For k = 3 the future tap w_{+1} adds
  (-2/3, +1/3, +4/3) x w_{+1} to the taps on frames (t-2, t-1, t). On inputs linear in time
  the extrapolative conv equals the original away from the sequence edges.
- **Normalisation spanning frames.** diffusers' ``TemporalConvLayer``, ``TemporalResnetBlock``
  and ``TransformerTemporalModel`` apply GroupNorm to ``[B, C, F, H, W]``: its mean and variance
  pool all F frames, so every frame's output depends on the future. These norms become
  ``FrameGroupNorm`` (the same affine weights, statistics over each frame alone). Cost to the
  pretrained weights: layers trained with statistics over a whole clip now see per-frame
  statistics, which differ by the clip's frame-to-frame variation (small for smooth clips,
  large for fast motion or cuts); the outputs change even where no future frame is involved and
  the causal post-training (diffusion forcing) has to absorb it. Spatial GroupNorms, applied to
  ``[B*F, C, H, W]``, are per-frame already and stay as they are.

``FrameConditionedUNet3D`` adds what Vid2World adds to DynamiCrafter: a noise level per frame
and a per-frame action embedding, both added to the frame's time embedding.

Causal modules keep the state_dict keys of the originals, so a causalized model saves and
loads like the original one. diffusers' ``set_attn_processor`` / ``set_default_attn_processor``
would remove the causal masks: call them before ``causalize``, not after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from diffusers.models.attention import TemporalBasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import TemporalConvLayer, TemporalResnetBlock
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import Tensor, nn

from wmplan.models.nanowm import NanoWM

TRANSFERS = ("shift", "masked", "extrapolative")
# diffusers modules whose frames mix: all their GroupNorms, time convs and self-attentions.
TEMPORAL_LAYERS = (TemporalConvLayer, TemporalResnetBlock, TransformerTemporalModel, TemporalBasicTransformerBlock)


def check_transfer(transfer: str) -> None:
    if transfer not in TRANSFERS:
        raise ValueError(f"unknown transfer {transfer!r}; expected one of {TRANSFERS}")


def extrapolation_coefficients(kernel_size: int) -> Tensor:
    """``alpha [k, m]`` float64: the OLS line through frames t-(k-1) .. t evaluated at t + s is
    ``sum_j alpha[j, s-1] x_{t-(k-1)+j}`` (s = 1..m, m = k // 2). Each column sums to 1.

    With offsets tau_j = j - (k-1), mean tau_bar and S = sum (tau - tau_bar)^2:
    alpha[j, s-1] = 1 / k + (tau_j - tau_bar)(s - tau_bar) / S. k = 3: (-2/3, 1/3, 4/3).
    """
    tau = torch.arange(1 - kernel_size, 1, dtype=torch.float64)  # [k] past offsets, current last
    s = torch.arange(1, kernel_size // 2 + 1, dtype=torch.float64)  # [m] future offsets
    centred = tau - tau.mean()
    return 1 / kernel_size + centred[:, None] * (s[None] - tau.mean()) / centred.pow(2).sum()


def transfer_matrix(kernel_size: int, transfer: str) -> Tensor:
    """``M [k, k]`` float64 with causal tap j = sum_i M[j, i] * original tap i.

    Original tap i reads frame t + i - m (m = k // 2, symmetric); causal tap j reads frame
    t - (k-1) + j. Shift: M = I. Masked: tap i <= m moves to j = i + m (same frame), future taps
    are dropped. Extrapolative: masked plus each future tap spread by ``extrapolation_coefficients``.
    """
    check_transfer(transfer)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"temporal kernel size {kernel_size} is not supported by the {transfer!r} transfer: "
            "it needs an odd kernel (symmetric 'same' padding, m = k // 2 future taps)"
        )
    k, m = kernel_size, kernel_size // 2
    if transfer == "shift":
        return torch.eye(k, dtype=torch.float64)
    matrix = torch.zeros(k, k, dtype=torch.float64)
    matrix[torch.arange(m, k), torch.arange(m + 1)] = 1.0  # past and present taps keep their frames
    if transfer == "extrapolative":
        matrix[:, m + 1 :] = extrapolation_coefficients(k)
    return matrix


def causal_kernel(weight: Tensor, transfer: str) -> Tensor:
    """Conv weights ``[out, in, k, ...]`` (time = first kernel axis) -> causal weights, same shape."""
    matrix = transfer_matrix(weight.shape[2], transfer)
    taps_last = weight.double().movedim(2, -1)  # [out, in, ..., k]
    return (taps_last @ matrix.T).movedim(-1, 2).to(weight.dtype)


class _LeftPadTime:
    """Conv mixin: pad time (input axis 2) by k - 1 frames on the left only, then convolve."""

    def forward(self, x: Tensor) -> Tensor:
        pad = [0, 0] * (x.ndim - 3) + [self.kernel_size[0] - 1, 0]  # F.pad lists the last axis first
        return super().forward(F.pad(x, pad))


class CausalConv1d(_LeftPadTime, nn.Conv1d):
    """``[B, C, T]`` convolution where output frame t reads input frames t-k+1 .. t."""


class CausalConv3d(_LeftPadTime, nn.Conv3d):
    """``[B, C, F, H, W]`` convolution where output frame t reads input frames t-k+1 .. t."""


def check_conv(conv: nn.Conv1d | nn.Conv3d, transfer: str) -> None:
    """ValueError unless ``conv`` is a symmetric 'same' temporal conv (time = first kernel axis)."""
    check_transfer(transfer)
    if isinstance(conv.padding, str):
        raise ValueError(f"temporal conv {conv} must have integer padding to be made causal, got {conv.padding!r}")
    k, pad = conv.kernel_size[0], conv.padding[0]
    if conv.stride[0] != 1 or conv.dilation[0] != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"only stride-1, undilated, zero-padded temporal convs can be made causal, got {conv}")
    if k % 2 == 0 or pad != k // 2:
        raise ValueError(
            f"temporal conv {conv} is not a symmetric 'same' conv (odd kernel k, time padding k // 2): "
            f"the {transfer!r} transfer does not apply to kernel size {k} with padding {pad}"
        )


def causal_conv(conv: nn.Conv1d | nn.Conv3d, transfer: str) -> CausalConv1d | CausalConv3d:
    """A causal copy of a symmetric temporal conv (time = its first kernel axis), weights transferred."""
    check_conv(conv, transfer)
    cls = CausalConv1d if isinstance(conv, nn.Conv1d) else CausalConv3d
    # skip_init: no random init to overwrite (and the global RNG is left alone).
    causal = nn.utils.skip_init(
        cls, conv.in_channels, conv.out_channels, conv.kernel_size, padding=(0, *conv.padding[1:]),
        groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        causal.weight.copy_(causal_kernel(conv.weight, transfer))
        if conv.bias is not None:
            causal.bias.copy_(conv.bias)
    return causal.train(conv.training).requires_grad_(conv.weight.requires_grad)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm of each frame of ``[B, C, F, H, W]`` on its own (4-D inputs: plain GroupNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5:
            return super().forward(x)
        B, C, T, H, W = x.shape
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)  # [B*F, C, H, W]
        return super().forward(frames).view(B, T, C, H, W).transpose(1, 2)  # [B, C, F, H, W]


def frame_group_norm(norm: nn.GroupNorm) -> FrameGroupNorm:
    """A ``FrameGroupNorm`` with ``norm``'s groups, eps and affine weights."""
    like = {"device": norm.weight.device, "dtype": norm.weight.dtype} if norm.affine else {}
    new = FrameGroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine, **like)
    new.load_state_dict(norm.state_dict())
    return new


class CausalAttnProcessor:
    """Runs an ``Attention``'s own processor on frames ``[B', F, C]`` with a causal mask added.

    The mask is additive (0 or -inf) so that both torch-SDPA and classic processors apply it, and
    an expanded view ``[B' * heads, F, F]`` so that no copy per batch row is made.
    """

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("causal temporal attention takes frames [B, F, C] only, no encoder states or mask")
        B, T, _ = hidden_states.shape
        future = torch.ones(T, T, dtype=torch.bool, device=hidden_states.device).triu(1)  # [F, F]
        mask = torch.zeros(T, T, dtype=hidden_states.dtype, device=hidden_states.device).masked_fill(future, -torch.inf)
        mask = mask.expand(B * attn.heads, T, T)
        return self.inner(attn, hidden_states, attention_mask=mask, temb=temb)


def causalize(model: nn.Module, transfer: str = "extrapolative") -> nn.Module:
    """Make ``model``'s time axis causal in place (see the module docstring); returns ``model``.

    ``transfer`` (``shift | masked | extrapolative``) sets the temporal conv weights. A ValueError
    names the problem when the transfer is unknown, a temporal conv's kernel is unsupported, the
    model is causal already, or it has nothing temporal to causalize.
    """
    check_transfer(transfer)
    nanowms = [m for m in model.modules() if isinstance(m, NanoWM)]
    if nanowms:
        for nanowm in nanowms:
            _causalize_nanowm(nanowm, transfer)
        return model
    if any(isinstance(m, (CausalConv1d, CausalConv3d, FrameGroupNorm)) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is causalized already")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, TEMPORAL_LAYERS)]
    if not layers:
        raise ValueError(
            f"nothing temporal to causalize in {type(model).__name__}: no NanoWM and no diffusers temporal "
            f"layer ({', '.join(cls.__name__ for cls in TEMPORAL_LAYERS)})"
        )
    for _, layer in layers:  # check every conv first: an error leaves the model untouched
        for conv in layer.modules():
            if isinstance(conv, nn.Conv3d) and conv.kernel_size[0] > 1:
                check_conv(conv, transfer)
    for prefix, layer in layers:
        _causalize_layer(model, prefix, layer, transfer)
    return model


def _causalize_nanowm(model: NanoWM, transfer: str) -> None:
    """Set ``causal`` (temporal attention masks) and transfer every temporal conv's kernel."""
    if model.cfg.causal:
        raise ValueError("this NanoWM is causal already (cfg.causal=True): nothing to causalize")
    model.cfg.causal = True
    for block in model.blocks:
        if block.axis != "time":
            continue
        block.attn.causal = True
        if block.temporal_conv is not None:
            with torch.no_grad():
                weight = block.temporal_conv.conv.weight  # [D, 1, k]
                weight.copy_(causal_kernel(weight, transfer))
            block.temporal_conv.causal = True


def _causalize_layer(root: nn.Module, prefix: str, layer: nn.Module, transfer: str) -> None:
    """Per-frame norms, causal time convs and causal self-attention inside one diffusers temporal layer."""
    for name, child in list(layer.named_modules()):
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, (FrameGroupNorm, _LeftPadTime)):
            continue  # done already (a temporal layer nested in another one)
        if isinstance(child, nn.GroupNorm):
            _replace(root, path, frame_group_norm(child))
        elif isinstance(child, nn.Conv3d) and child.kernel_size[0] > 1:
            _replace(root, path, causal_conv(child, transfer))
        elif isinstance(child, Attention) and not child.is_cross_attention:
            if not isinstance(child.processor, CausalAttnProcessor):
                child.set_processor(CausalAttnProcessor(child.processor))


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent), name, module)


class FrameConditionedUNet3D(nn.Module):
    """A ``UNet3DConditionModel`` with Vid2World's frame-level conditions.

    Every frame has its own noise level (``t [B, F]``, embedded by the U-Net's own sinusoid and
    MLP) and its own action (``actions[:, f]`` = a_{f-1}, the action that led to frame f, as
    ``nanowm.shift_actions`` lays them out), embedded by an MLP like the time embedding's with a
    linear first layer, and added to that frame's time embedding. The action MLP's last layer
    starts at zero: with equal noise levels the wrapper equals the U-Net it wraps.

    diffusers' forward embeds one timestep per clip and repeats it over the frames, so this
    forward runs the U-Net's submodules in the order of ``UNet3DConditionModel.forward`` with the
    per-frame embedding ``[B*F, D]`` where the U-Net would use the repeated one.
    """

    def __init__(self, unet: UNet3DConditionModel, action_dim: int):
        super().__init__()
        if not isinstance(unet, UNet3DConditionModel):
            raise ValueError(f"FrameConditionedUNet3D wraps a UNet3DConditionModel, got {type(unet).__name__}")
        self.unet = unet
        width = unet.time_embedding.linear_2.out_features
        self.action_dim = action_dim
        self.action_embed = nn.Sequential(nn.Linear(action_dim, width), nn.SiLU(), nn.Linear(width, width))
        nn.init.zeros_(self.action_embed[-1].weight)
        nn.init.zeros_(self.action_embed[-1].bias)

    def frame_embedding(self, t: Tensor, actions: Tensor) -> Tensor:
        """``t [B, F]``, ``actions [B, F, A]`` -> ``[B*F, D]`` (batch-major, the U-Net's frame order)."""
        unet = self.unet
        t_emb = unet.time_proj(t.flatten()).to(unet.dtype)  # [B*F, C0]
        return unet.time_embedding(t_emb) + self.action_embed(actions.flatten(0, 1).to(unet.dtype))

    def forward(self, sample: Tensor, t: Tensor, actions: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        """``sample [B, C, F, H, W]``, ``t [B, F]``, ``actions [B, F, A]``, ``encoder_hidden_states
        [B, L, E]`` -> ``[B, C_out, F, H, W]``."""
        B, _, T, H, W = sample.shape
        if tuple(t.shape) != (B, T) or tuple(actions.shape) != (B, T, self.action_dim):
            raise ValueError(
                f"t must be [B, F] = {[B, T]} and actions [B, F, action_dim] = {[B, T, self.action_dim]}, "
                f"got {list(t.shape)} and {list(actions.shape)}"
            )
        unet = self.unet
        emb = self.frame_embedding(t, actions)  # [B*F, D]
        context = {"encoder_hidden_states": encoder_hidden_states.repeat_interleave(T, dim=0)}  # [B*F, L, E]
        x = sample.transpose(1, 2).reshape(B * T, -1, H, W)  # [B*F, C, H, W]
        x = unet.conv_in(x)
        x = unet.transformer_in(x, num_frames=T, return_dict=False)[0]
        skips = (x,)
        for block in unet.down_blocks:
            cross = context if getattr(block, "has_cross_attention", False) else {}
            x, res = block(hidden_states=x, temb=emb, num_frames=T, **cross)
            skips += res
        if unet.mid_block is not None:
            x = unet.mid_block(x, emb, num_frames=T, **context)
        # Sizes not divisible by the total upsampling: each upsampler gets its skip's size, as in the U-Net.
        uneven = any(s % 2**unet.num_upsamplers for s in (H, W))
        for i, block in enumerate(unet.up_blocks):
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            size = skips[-1].shape[2:] if uneven and i < len(unet.up_blocks) - 1 else None
            cross = context if getattr(block, "has_cross_attention", False) else {}
            x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=size, num_frames=T, **cross)
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        x = unet.conv_out(x)  # [B*F, C_out, H, W]
        return x.view(B, T, *x.shape[1:]).transpose(1, 2)  # [B, C_out, F, H, W]
