"""Attention for NanoWM: rotary position embeddings (1-D and 2-D), QK-RMSNorm self-attention
along one axis of a [B, T, N, D] token grid, and the cross-attention used for action injection.

Rotary tables are one tensor ``rope [2, L, head_dim]`` (cos, signed sin), so a layer takes a
single argument; the model reshapes them to broadcast over its token layout. Rotation pairs
channel ``i`` with channel ``i + head_dim / 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROPE_BASE = 10000.0
KV = tuple[Tensor, Tensor]  # keys, values [B, N, H, T, head_dim] of temporal attention


def _frequencies(n: int) -> Tensor:
    """``n`` rotary frequencies from 1 down to about 1 / ROPE_BASE."""
    return ROPE_BASE ** (-torch.arange(n, dtype=torch.float64) / n)


def _table(angles: Tensor) -> Tensor:
    """Angles ``[L, head_dim / 2]`` -> ``[2, L, head_dim]``: cos and the sin signed for ``apply_rope``."""
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
    return torch.stack([cos, sin]).float()


def rope_1d(length: int, head_dim: int) -> Tensor:
    """Rotary table for positions ``0..length-1`` (time): ``[2, length, head_dim]``."""
    if head_dim % 2:
        raise ValueError(f"1-D RoPE needs an even head_dim, got {head_dim}")
    positions = torch.arange(length, dtype=torch.float64)
    return _table(positions[:, None] * _frequencies(head_dim // 2))


def rope_2d(height: int, width: int, head_dim: int, extra_tokens: int = 0) -> Tensor:
    """Rotary table for a ``height x width`` patch grid in row-major order: ``[2, L, head_dim]``.

    Half of the rotation pairs encode the row, half the column. ``extra_tokens`` rows with
    angle 0 (no rotation) are appended for tokens that have no place on the grid (proprio).
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
    freqs = _frequencies(head_dim // 4)
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)  # [h*w]
    cols = torch.arange(width, dtype=torch.float64).repeat(height)  # [h*w]
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # [h*w, hd/2]
    angles = torch.cat([angles, angles.new_zeros(extra_tokens, head_dim // 2)])
    return _table(angles)


def apply_rope(x: Tensor, rope: Tensor) -> Tensor:
    """Rotate ``x [..., head_dim]`` by ``rope [2, ..., head_dim]`` (broadcast over the rest).

    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin); rolling by head_dim / 2 gives (x2, x1).
    """
    cos, sin = rope.to(x.dtype)  # keep bf16 activations in bf16 under autocast
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def qk_norm(x: Tensor, norm: nn.RMSNorm) -> Tensor:
    """RMSNorm over head_dim with the weight cast to ``x``'s dtype (keeps the fused kernel)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


class Attention(nn.Module):
    """Multi-head self-attention with QK-RMSNorm and RoPE over one axis of ``[B, T, N, D]``.

    ``axis="space"`` attends among the N tokens of each frame; ``axis="time"`` attends among
    the T frames at each token position. Both read the same layout, so the residual stream is
    never transposed: only q, k, v are permuted into SDPA's ``[..., heads, L, head_dim]``.
    """

    def __init__(self, width: int, heads: int, axis: str, causal: bool = False):
        super().__init__()
        if axis not in ("space", "time"):
            raise ValueError(f"axis must be 'space' or 'time', got {axis!r}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.axis, self.causal = axis, causal
        self.qkv = nn.Linear(width, 3 * width)  # one fused matmul for q, k, v
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, rope: Tensor, past: KV | None = None) -> tuple[Tensor, KV | None]:
        """``x [B, T, N, D]``; ``rope`` is ``[2, N, 1, hd]`` (space) or ``[2, T, 1, 1, hd]`` (time).

        Time axis only: ``past`` holds the keys and values ``[B, N, H, Tp, hd]`` of ``Tp`` frames
        that precede ``x``'s (a context cache); ``x``'s frames attend to them and, causally, to
        each other. Returns (out ``[B, T, N, D]``, this call's own (k, v) on the time axis, else None).
        """
        B, T, N, D = x.shape
        q, k, v = self.qkv(x).view(B, T, N, 3, self.heads, self.head_dim).unbind(3)  # [B, T, N, H, hd]
        # Norm and rotate in the token layout (their outputs are contiguous), then hand SDPA views.
        q = apply_rope(qk_norm(q, self.q_norm), rope)
        k = apply_rope(qk_norm(k, self.k_norm), rope)
        # space: [B, T, H, N, hd]; time: [B, N, H, T, hd]
        to_heads = (0, 1, 3, 2, 4) if self.axis == "space" else (0, 2, 3, 1, 4)
        q, k, v = (z.permute(to_heads) for z in (q, k, v))
        own = (k, v) if self.axis == "time" else None
        if past is not None:
            if self.axis != "time" or not self.causal:
                raise ValueError("a context cache needs causal temporal attention")
            k, v = torch.cat([past[0].to(k.dtype), k], dim=3), torch.cat([past[1].to(v.dtype), v], dim=3)
        out = attend(q, k, v, self.causal)
        from_heads = (0, 1, 3, 2, 4) if self.axis == "space" else (0, 3, 1, 2, 4)
        return self.proj(out.permute(from_heads).reshape(B, T, N, D)), own  # [B, T, N, D]


SHORT_SEQUENCE = 64  # keys; below this, CPU attention runs as explicit matmuls (see ``attend``)


def attend(q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(hd)) v for q ``[..., L, hd]``, k and v ``[..., S, hd]`` with S >= L;
    ``causal``: query i (the last L of the S positions) sees keys up to its own position.

    NanoWM's sequences are short (17 tokens per frame, a few frames) and its batches huge.
    There torch's CPU SDPA kernels ran 3-6x slower than two batched matmuls and a softmax
    (measured on 300 candidates x 6 frames x 17 tokens, fp32 and bf16), so short sequences
    on the CPU take the explicit path; long sequences and GPUs keep SDPA's fused kernels.
    """
    L, S = q.shape[-2], k.shape[-2]
    mask = causal_mask(L, S - L, q.device) if causal else None
    if q.device.type != "cpu" or S > SHORT_SEQUENCE:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # [..., L, S]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(v.dtype) @ v


def causal_mask(n_new: int, n_past: int, device: torch.device) -> Tensor:
    """Bool ``[n_new, n_past + n_new]``: new frame i sees the past frames and new frames <= i."""
    keys = torch.arange(n_past + n_new, device=device)
    return keys[None] <= n_past + torch.arange(n_new, device=device)[:, None]


class CrossAttention(nn.Module):
    """Multi-head attention from the tokens of each frame to that frame's context tokens."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """``x [B, T, N, D]`` attends to ``context [B, T, M, D]``; returns ``[B, T, N, D]``."""
        B, T, N, D = x.shape
        q = self.q(x).view(B, T, N, self.heads, self.head_dim).transpose(2, 3)  # [B, T, H, N, hd]
        kv = self.kv(context).view(B, T, -1, 2, self.heads, self.head_dim)
        k, v = kv.permute(3, 0, 1, 4, 2, 5)  # each [B, T, H, M, hd]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(2, 3).reshape(B, T, N, D))
