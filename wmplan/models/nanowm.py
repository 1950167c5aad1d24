"""NanoWM: a diffusion-forcing video transformer over latent frames, conditioned on actions.

Latents ``[B, T, C, h, w]`` are cut into ``p x p`` patches, giving ``N`` tokens per frame
(plus one proprio token when ``proprio_dim > 0``). Blocks alternate spatial attention (within
a frame, 2-D RoPE) and temporal attention (across frames at one position, 1-D RoPE, causal);
``depth`` counts both kinds. Every frame has its own noise level: adaLN-Zero modulates the
tokens of frame t with the embedding of t's noise level (and, by injection, of its action).
Optionally (``temporal_conv = k``) each temporal block starts with a depthwise convolution over
time, the temporal convolution of video U-Nets; ``wmplan.models.causalize`` makes a non-causal
model with one causal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmplan.models.action_injection import ActionEmbedding, ActionInjection, check_injection
from wmplan.models.attention import KV, Attention, rope_1d, rope_2d


@dataclass
class NanoWMConfig:
    latent_channels: int
    latent_size: int | tuple[int, int]  # h = w, or (h, w)
    patch_size: int
    width: int
    depth: int  # spatial + temporal blocks (Latte convention), even
    heads: int
    action_dim: int  # planner action width k * A
    mlp_ratio: float = 4.0
    proprio_dim: int = 0  # 0 = no proprio token
    action_injection: str = "additive"
    causal: bool = True
    max_frames: int = 64
    temporal_conv: int = 0  # odd kernel size of a depthwise temporal conv per temporal block, 0 = none

    def __post_init__(self) -> None:
        size = self.latent_size
        self.latent_size = int(size) if isinstance(size, int) else tuple(int(s) for s in size)
        h, w = self.latent_hw
        p = self.patch_size
        positive = ("latent_channels", "patch_size", "width", "depth", "heads", "action_dim", "max_frames")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"NanoWMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by patch_size {p}")
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ValueError(
                f"width / heads = {self.width}/{self.heads} must be an integer divisible by 4 (2-D RoPE)"
            )
        if self.depth % 2:
            raise ValueError(f"depth counts spatial+temporal pairs and must be even, got {self.depth}")
        if self.proprio_dim < 0:
            raise ValueError(f"proprio_dim must be >= 0, got {self.proprio_dim}")
        if self.temporal_conv < 0 or (self.temporal_conv > 0 and self.temporal_conv % 2 == 0):
            raise ValueError(f"temporal_conv must be 0 (off) or an odd kernel size, got {self.temporal_conv}")
        check_injection(self.action_injection)

    @property
    def latent_hw(self) -> tuple[int, int]:
        size = self.latent_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


# (width, depth, heads, allowed patch sizes); S..XL from Nano World Models, tiny/mini for CPU.
SIZES = {
    "S": (384, 12, 6, (1, 2, 4, 8)),
    "B": (768, 12, 12, (1, 2, 4, 8)),
    "L": (1024, 24, 16, (1, 2, 4, 8)),
    "XL": (1152, 28, 16, (2, 4, 8)),
    "mini": (192, 4, 6, (1, 2, 4, 8)),
    "tiny": (64, 4, 4, (1, 2, 4, 8)),
}
# The reference data shape the named sizes are quoted at (latent 32x32x4, 7-D action).
REFERENCE_DATA = {"latent_channels": 4, "latent_size": 32, "action_dim": 7}


def nanowm_config(size: str, patch_size: int = 2, **overrides) -> NanoWMConfig:
    """Named size ``S | B | L | XL | mini | tiny`` with patch ``patch_size`` (e.g. S/2)."""
    if size not in SIZES:
        raise ValueError(f"unknown NanoWM size {size!r}; expected one of {tuple(SIZES)}")
    width, depth, heads, patches = SIZES[size]
    if patch_size not in patches:
        raise ValueError(f"NanoWM-{size} supports patch sizes {patches}, got {patch_size}")
    fields = {**REFERENCE_DATA, "width": width, "depth": depth, "heads": heads, **overrides}
    return NanoWMConfig(patch_size=patch_size, **fields)


def shift_actions(actions: Tensor) -> Tensor:
    """``[B, T-1, Aw]`` (a_i takes frame i to i+1) -> ``[B, T, Aw]`` (a_{t-1} at frame t, zeros at 0)."""
    if actions.ndim != 3:
        raise ValueError(f"actions must be [B, T-1, Aw], got shape {tuple(actions.shape)}")
    return F.pad(actions, (0, 0, 1, 0))


def patchify(x: Tensor, p: int) -> Tensor:
    """``[B, T, C, h, w]`` -> ``[B, T, N, C*p*p]``, patches in row-major order."""
    B, T, C, h, w = x.shape
    x = x.reshape(B, T, C, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, T, (h // p) * (w // p), C * p * p)


def unpatchify(tokens: Tensor, C: int, h: int, w: int, p: int) -> Tensor:
    """``[B, T, N, C*p*p]`` -> ``[B, T, C, h, w]``; inverse of ``patchify``."""
    B, T = tokens.shape[:2]
    x = tokens.reshape(B, T, h // p, w // p, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, T, C, h, w)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift in one pass


class TimestepEmbedding(nn.Module):
    """Sinusoidal features of a noise level in [0, 1000] followed by an MLP."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.fc1 = nn.Linear(frequency_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, t: Tensor) -> Tensor:
        """``t [B, T]`` -> ``[B, T, D]``."""
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        angles = t.float()[..., None] * freqs  # [B, T, half]
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)
        return self.fc2(F.silu(self.fc1(features)))


class SwiGLU(nn.Module):
    """SwiGLU MLP; the gate and value projections are one fused matmul."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(width, 2 * hidden)
        self.fc_out = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc_in(x).chunk(2, dim=-1)
        return self.fc_out(F.silu(gate) * value)


class TemporalConv(nn.Module):
    """Depthwise convolution over time of ``[B, T, N, D]`` tokens with an odd kernel ``k``.

    Non-causal: symmetric padding, frame t sees frames t-k//2 .. t+k//2. Causal: left padding
    only, frame t sees t-k+1 .. t (kernel tap j acts on frame t-k+1+j). T is unchanged either way.
    """

    def __init__(self, width: int, kernel_size: int, causal: bool):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size, groups=width)
        self.causal = causal

    def forward(self, x: Tensor) -> Tensor:
        B, T, N, D = x.shape
        k = self.conv.kernel_size[0]
        pad = (k - 1, 0) if self.causal else (k // 2, k // 2)
        seq = x.permute(0, 2, 3, 1).reshape(B * N, D, T)  # [B*N, D, T]
        out = self.conv(F.pad(seq, pad))
        return out.view(B, N, D, T).permute(0, 3, 1, 2)  # [B, T, N, D]


class Block(nn.Module):
    """adaLN-Zero block: attention along ``axis`` ('space' or 'time'), action injection, SwiGLU."""

    def __init__(self, cfg: NanoWMConfig, axis: str):
        super().__init__()
        D = cfg.width
        self.axis = axis
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, cfg.heads, axis, causal=cfg.causal and axis == "time")
        # None when off (registers no parameters: state_dict keys as before).
        use_conv = axis == "time" and cfg.temporal_conv > 0
        self.temporal_conv = TemporalConv(D, cfg.temporal_conv, cfg.causal) if use_conv else None
        self.action = ActionInjection(cfg.action_injection, D, cfg.heads)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = SwiGLU(D, int(cfg.mlp_ratio * D))
        self.modulation = nn.Linear(D, 6 * D)

    def forward(
        self, x: Tensor, cond: Tensor, action: Tensor, null_action: Tensor | None, rope: Tensor,
        past: KV | None = None,
    ) -> tuple[Tensor, KV | None]:
        """``x [B, T, N, D]``; ``cond``, ``action [B, T, D]`` per frame; ``rope`` for ``axis``;
        ``past`` the cached keys and values of earlier frames (time blocks). Returns (x, own k/v)."""
        if self.temporal_conv is not None:
            x = x + self.temporal_conv(x)
        x = self.action.tokens(x, action)
        mod = self.modulation(F.silu(cond))  # [B, T, 6D]
        action_mod = self.action.modulation(action)
        if action_mod is not None:
            mod = mod + action_mod
        shift1, scale1, gate1, shift2, scale2, gate2 = mod[:, :, None].chunk(6, dim=-1)  # [B, T, 1, D]
        attended, kv = self.attn(modulate(self.norm1(x), shift1, scale1), rope, past)
        x = self.action.after_attention(torch.addcmul(x, gate1, attended), action, null_action)
        return torch.addcmul(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2))), kv


class ContextCache:
    """Keys and values of context frames in every temporal block, computed once.

    Temporal attention is causal and spatial attention stays within a frame, so context frames
    never see the frames after them: their keys and values are the same whatever follows.
    A planner rolls out many candidates from one context; computing the context once per
    episode and reusing it for every candidate and denoising step removes its share of the
    work (1/6 of the tokens for Wall's 1 + 5 frames, 3/8 for PushT's 3 + 5).
    """

    def __init__(self, kv: list[KV], n_frames: int):
        self.kv, self.n_frames = kv, n_frames  # kv: per temporal block, each [B, N, H, Tc, hd]

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]

    def repeat_interleave(self, repeats: int) -> "ContextCache":
        """Each row ``repeats`` times in a row: ``[B, ...]`` -> ``[B * repeats, ...]``."""
        return self if repeats == 1 else self.map(lambda x: x.repeat_interleave(repeats, dim=0))

    def tile(self, times: int) -> "ContextCache":
        """The whole batch ``times`` times: ``[B, ...]`` -> ``[times * B, ...]``."""
        return self.map(lambda x: x.repeat(times, *([1] * (x.ndim - 1))))

    def map(self, fn) -> "ContextCache":
        return ContextCache([(fn(k), fn(v)) for k, v in self.kv], self.n_frames)


class NanoWM(nn.Module):
    """The NanoWM denoiser. Weights are drawn from torch's global RNG: seed it for reproducibility."""

    def __init__(self, cfg: NanoWMConfig):
        super().__init__()
        self.cfg = cfg
        D, p, C, P = cfg.width, cfg.patch_size, cfg.latent_channels, cfg.proprio_dim
        h, w = cfg.latent_hw
        self.num_patches = (h // p) * (w // p)
        self.patch_embed = nn.Linear(C * p * p, D)
        self.proprio_in = nn.Linear(P, D) if P else None
        self.t_embed = TimestepEmbedding(D)
        self.action_embed = ActionEmbedding(cfg.action_dim, D, cfg.action_injection)
        self.blocks = nn.ModuleList(Block(cfg, "space" if i % 2 == 0 else "time") for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(D, 2 * D)
        self.head = nn.Linear(D, C * p * p)
        self.proprio_out = nn.Linear(D, P) if P else None
        head_dim = D // cfg.heads
        # Tables broadcast over [B, T, N, H, hd]: space [2, N, 1, hd], time [2, T, 1, 1, hd].
        # The proprio token sits last in each frame, unrotated (it has no place on the grid).
        rope_space = rope_2d(h // p, w // p, head_dim, extra_tokens=int(P > 0))[:, :, None]
        self.register_buffer("rope_space", rope_space, persistent=False)
        rope_time = rope_1d(cfg.max_frames, head_dim)[:, :, None, None]
        self.register_buffer("rope_time", rope_time, persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT initialisation: xavier linears, N(0, 0.02) timestep MLP, zero adaLN and outputs."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embed.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embed.fc2.weight, std=0.02)
        zero = [self.final_modulation, self.head, self.proprio_out]
        zero += [block.modulation for block in self.blocks]
        # A temporal conv starts as the identity of its residual branch, like adaLN-Zero.
        zero += [block.temporal_conv.conv for block in self.blocks if block.temporal_conv is not None]
        if self.action_embed.zero_init:
            zero.append(self.action_embed.fc2)
        for layer in filter(None, zero):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for block in self.blocks:
            block.action.zero_init()

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        actions: Tensor,
        proprio: Tensor | None = None,
        action_mask: Tensor | None = None,
        past: ContextCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Denoise every frame at its own noise level.

        x [B, T, C, h, w] noisy latents; t [B, T] noise levels in [0, 1000]; actions [B, T, Aw]
        with ``actions[:, t]`` = a_{t-1}; proprio [B, T, P] (iff proprio_dim > 0); action_mask
        [B, T] bool, False replaces that frame's action by the null (zero) action; past: the
        ``cache_context`` of the frames before x's (x's frames then sit at times Tc..Tc+T-1).
        Returns (out [B, T, C, h, w], out_proprio [B, T, P] or None).
        """
        tokens, cond, _ = self._trunk(x, t, actions, proprio, action_mask, past)
        cfg, N = self.cfg, self.num_patches
        shift, scale = self.final_modulation(F.silu(cond))[:, :, None].chunk(2, dim=-1)  # [B, T, 1, D]
        tokens = modulate(self.final_norm(tokens), shift, scale)
        h, w = cfg.latent_hw
        out = unpatchify(self.head(tokens[:, :, :N]), cfg.latent_channels, h, w, cfg.patch_size)
        out_proprio = self.proprio_out(tokens[:, :, N]) if self.proprio_out is not None else None
        return out, out_proprio

    @property
    def causal(self) -> bool:
        """Temporal attention is causal: frame t never sees later frames."""
        return self.cfg.causal

    @property
    def supports_context_cache(self) -> bool:
        """Context frames can be run once and cached only when temporal attention is causal (and
        there is no temporal conv: the cache keeps keys and values, not the conv's input frames)."""
        return self.causal and not self.cfg.temporal_conv

    def cache_context(self, x: Tensor, t: Tensor, actions: Tensor, proprio: Tensor | None = None) -> ContextCache:
        """Run context frames x [B, Tc, C, h, w] (levels t [B, Tc], actions [B, Tc, Aw], proprio
        [B, Tc, P]) once and keep every temporal block's keys and values for ``forward(past=)``."""
        if not self.cfg.causal:
            raise ValueError("a context cache needs a causal model (causal=True)")
        if self.cfg.temporal_conv:
            raise ValueError("a context cache does not support temporal_conv (it keeps no conv inputs)")
        _, _, kv = self._trunk(x, t, actions, proprio, None, None)
        return ContextCache(kv, x.shape[1])

    def _trunk(self, x, t, actions, proprio, action_mask, past):
        """Embed and run the blocks: (tokens [B, T, N(+1), D], cond [B, T, D], temporal k/v per block)."""
        self._check_inputs(x, t, actions, proprio, action_mask, past)
        cfg = self.cfg
        tokens = self.patch_embed(patchify(x, cfg.patch_size))  # [B, T, N, D]
        if self.proprio_in is not None:
            tokens = torch.cat([tokens, self.proprio_in(proprio)[:, :, None]], dim=2)  # [B, T, N+1, D]
        cond = self.t_embed(t)  # [B, T, D]
        action = self.action_embed(actions, action_mask)  # [B, T, D]
        if cfg.action_injection == "adaln_fuse":
            cond = cond + action
        null_action = None
        if cfg.action_injection == "cross_attention":
            null_action = self.action_embed(actions.new_zeros(cfg.action_dim))  # [D]
        first = 0 if past is None else past.n_frames  # x's first frame's time index
        rope_time = self.rope_time[:, first : first + x.shape[1]]
        past_kv = iter(past.kv) if past is not None else None
        kv = []
        for block in self.blocks:
            is_time = block.axis == "time"
            rope = rope_time if is_time else self.rope_space
            tokens, own = block(tokens, cond, action, null_action, rope, next(past_kv) if is_time and past else None)
            if is_time:
                kv.append(own)
        return tokens, cond, kv

    @torch.no_grad()
    def action_embedding_rms(self, actions: Tensor) -> float:
        """RMS of the action embedding of ``actions [B, T, Aw]`` (0 = actions are ignored)."""
        self._check_actions(actions, actions.shape[:2])
        return self.action_embed(actions).float().pow(2).mean().sqrt().item()

    def _check_actions(self, actions: Tensor, batch_time: tuple[int, ...]) -> None:
        expected = (*batch_time, self.cfg.action_dim)
        if actions.ndim != 3 or tuple(actions.shape) != expected:
            raise ValueError(
                f"actions must be [B, T, action_dim] = {list(expected)}, got {list(actions.shape)}"
                f" (the model was built with action_dim={self.cfg.action_dim})"
            )

    def _check_inputs(self, x, t, actions, proprio, action_mask, past) -> None:
        cfg = self.cfg
        h, w = cfg.latent_hw
        if x.ndim != 5 or tuple(x.shape[2:]) != (cfg.latent_channels, h, w):
            raise ValueError(f"x must be [B, T, {cfg.latent_channels}, {h}, {w}], got {list(x.shape)}")
        B, T = x.shape[:2]
        n_past = 0 if past is None else past.n_frames
        if T + n_past > cfg.max_frames:
            raise ValueError(f"{T} frames (+ {n_past} cached) exceed max_frames={cfg.max_frames}")
        if past is not None and past.batch_size != B:
            raise ValueError(f"the context cache has batch {past.batch_size}, x has {B}")
        if tuple(t.shape) != (B, T):
            raise ValueError(f"t must be [B, T] = {[B, T]}, got {list(t.shape)}")
        self._check_actions(actions, (B, T))
        if cfg.proprio_dim and (proprio is None or tuple(proprio.shape) != (B, T, cfg.proprio_dim)):
            got = None if proprio is None else list(proprio.shape)
            raise ValueError(f"proprio must be [B, T, proprio_dim] = {[B, T, cfg.proprio_dim]}, got {got}")
        if not cfg.proprio_dim and proprio is not None:
            raise ValueError("proprio was given but the model has no proprio token (proprio_dim=0)")
        if action_mask is not None and (action_mask.dtype != torch.bool or tuple(action_mask.shape) != (B, T)):
            got = f"{action_mask.dtype} {list(action_mask.shape)}"
            raise ValueError(f"action_mask must be bool [B, T] = {[B, T]}, got {got}")

