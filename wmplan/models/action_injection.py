"""How actions enter NanoWM: a shared action embedding and a per-block injection with a switch.

``injection`` is one of:
- ``additive``: the embedding is added to every token of its frame before each block;
- ``adaln``: the block's own zero-init adaLN modulation of the embedding is added to the
  timestep's shift / scale / gate;
- ``adaln_fuse``: the embedding is added to the timestep embedding once (done by the model;
  the per-block part is empty, no extra parameters);
- ``film``: after attention, ``x = (1 + gamma) x + beta`` with zero-init ``gamma, beta``;
- ``cross_attention``: after attention, tokens attend to their frame's action token and the
  null-action token, behind a zero-init gate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmplan.models.attention import CrossAttention

INJECTIONS = ("additive", "adaln", "adaln_fuse", "film", "cross_attention")


def check_injection(name: str) -> None:
    if name not in INJECTIONS:
        raise ValueError(f"unknown action_injection {name!r}; expected one of {INJECTIONS}")


class ActionEmbedding(nn.Module):
    """Linear-SiLU-Linear embedding of each frame's action, shared by all blocks.

    The last layer is zero-initialised when the embedding is added straight into the network
    (additive, adaln_fuse). The other injections zero-init their own per-block layer instead:
    zeroing both would leave every action weight with zero gradient forever.
    """

    def __init__(self, action_dim: int, width: int, injection: str):
        super().__init__()
        check_injection(injection)
        self.zero_init = injection in ("additive", "adaln_fuse")
        self.fc1 = nn.Linear(action_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, actions: Tensor, mask: Tensor | None = None) -> Tensor:
        """``actions [B, T, Aw]``, ``mask [B, T]`` (False = null action) -> ``[B, T, D]``."""
        if mask is not None:
            actions = actions * mask[..., None].to(actions.dtype)
        return self.fc2(F.silu(self.fc1(actions)))


class ActionInjection(nn.Module):
    """The per-block part of action conditioning; ``injection`` picks where the action enters.

    A block calls ``tokens`` before its attention, adds ``modulation`` to its adaLN
    modulation, and calls ``after_attention`` between attention and MLP; each injection
    acts in exactly one of these places and passes the others through.
    """

    def __init__(self, injection: str, width: int, heads: int):
        super().__init__()
        check_injection(injection)
        self.injection = injection
        if injection == "adaln":
            self.proj = nn.Linear(width, 6 * width)  # shift, scale, gate for attention and MLP
        elif injection == "film":
            self.proj = nn.Linear(width, 2 * width)  # gamma, beta
        elif injection == "cross_attention":
            self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.attn = CrossAttention(width, heads)
            self.gate = nn.Parameter(torch.zeros(width))

    def zero_init(self) -> None:
        """Make the injection start as the identity (adaLN-Zero style)."""
        if self.injection in ("adaln", "film"):
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        elif self.injection == "cross_attention":
            nn.init.zeros_(self.gate)

    def tokens(self, x: Tensor, action: Tensor) -> Tensor:
        """``x [B, T, N, D]``, ``action [B, T, D]``."""
        return x + action[:, :, None] if self.injection == "additive" else x

    def modulation(self, action: Tensor) -> Tensor | None:
        """``[B, T, 6D]`` added to the timestep's adaLN modulation, or None."""
        return self.proj(F.silu(action)) if self.injection == "adaln" else None

    def after_attention(self, x: Tensor, action: Tensor, null_action: Tensor) -> Tensor:
        """``x [B, T, N, D]``, ``action [B, T, D]``, ``null_action [D]`` (embedding of zeros)."""
        if self.injection == "film":
            gamma, beta = self.proj(F.silu(action))[:, :, None].chunk(2, dim=-1)  # [B, T, 1, D]
            return x * (1 + gamma) + beta
        if self.injection == "cross_attention":
            # With a single key the softmax is constant and q, k would get no gradient; the
            # null action as a second key lets each token choose how much action to take in.
            context = torch.stack([action, null_action.expand_as(action)], dim=2)  # [B, T, 2, D]
            return x + self.gate * self.attn(self.norm(x), context)
        return x
