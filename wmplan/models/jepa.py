"""A self-trained semantic latent: a JEPA world model in the style of LeWorldModel.

A small ViT encodes each frame to K summary tokens of D dims; a causal transformer,
conditioned on actions by adaLN-Zero, predicts the next frame's embedding from the last few.
Both train end to end from pixels with one loss

    L = MSE(predicted z_{t+1}, z_{t+1}) + lambda * SIGReg(z)

and no EMA target or stop-gradient: SIGReg (LeJEPA's Sketched Isotropic Gaussian
Regularization) pushes the embeddings towards an isotropic standard Gaussian, which rules out
collapse. See docs/JEPA.md for the formula and the sizes.

Layout: an embedding ``[K, D]`` is a latent ``[C=D, r, r]`` with ``r = sqrt(K)`` (tokens in
row-major order; K must be a perfect square, default K=1 -> ``[D, 1, 1]``), so codecs and
NanoWM (``patch_size=1``) consume it like any other latent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "wmplan-jepa/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class JEPAConfig:
    """Defaults: a ViT-Tiny encoder (width 192, 12 blocks, 3 heads) on 8 px patches of a 64 px
    frame, one 192-D token per frame, a 6-block predictor over the last 3 embeddings."""

    image_size: int = 64  # frame side H = W
    action_dim: int = 10  # planner action width Aw = frameskip * A
    patch_size: int = 8
    width: int = 192  # encoder
    depth: int = 12
    heads: int = 3
    embed_dim: int = 192  # D: the embedding (latent channels)
    num_tokens: int | None = None  # K tokens per frame, a perfect square; None: 1, or one per patch (tokens=patches)
    tokens: str = "summary"  # summary: K learned summary tokens (CLS for K=1); patches: the K patch tokens themselves
    history: int = 3  # frames the predictor sees (max context)
    pred_width: int = 192
    pred_depth: int = 6
    pred_heads: int = 3
    mlp_ratio: float = 4.0
    proprio_dim: int = 0  # P > 0: the predictor also reads and predicts the proprio (DINO-WM's input)
    probe_dim: int = 0  # F > 0: a head reads the env's pose features from each embedding (a supervised probe)

    def __post_init__(self) -> None:
        for name in ("image_size", "action_dim", "patch_size", "width", "depth", "heads", "embed_dim",
                     "history", "pred_width", "pred_depth", "pred_heads"):
            _check_positive_int(name, getattr(self, name))
        for name in ("proprio_dim", "probe_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"JEPAConfig.{name} must be an int >= 0 (0: none), got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.tokens not in ("summary", "patches"):
            raise ValueError(f"JEPAConfig.tokens must be 'summary' or 'patches', got {self.tokens!r}")
        patches = (self.image_size // self.patch_size) ** 2
        if self.num_tokens is None:
            self.num_tokens = patches if self.tokens == "patches" else 1
        _check_positive_int("num_tokens", self.num_tokens)
        if self.tokens == "patches" and self.num_tokens != patches:
            raise ValueError(f"tokens=patches keeps one token per patch: num_tokens must be {patches} "
                             f"((image_size {self.image_size} / patch_size {self.patch_size})^2) or null, got {self.num_tokens}")
        if math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ValueError(f"num_tokens must be a perfect square (tokens fold into an r x r grid), got {self.num_tokens}")
        for w, h, name in ((self.width, self.heads, "width/heads"), (self.pred_width, self.pred_heads, "pred_width/pred_heads")):
            if w % h:
                raise ValueError(f"{name} = {w}/{h} must be an integer")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        r = math.isqrt(self.num_tokens)
        return (self.embed_dim, r, r)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"JEPAConfig.{name} must be an int >= 1, got {value!r}")


# -- SIGReg ------------------------------------------------------------------------------
def sigreg_quadrature(knots: int = 17, t_max: float = 3.0) -> tuple[Tensor, Tensor]:
    """Knots t [knots] on [0, t_max] and weights [knots]: trapezoid rule, doubled (the
    integrand is even in t), times the Epps-Pulley window exp(-t^2 / 2)."""
    t = torch.linspace(0, t_max, knots)
    dt = t_max / (knots - 1)
    trapezoid = torch.full((knots,), dt)
    trapezoid[[0, -1]] = dt / 2
    return t, 2 * trapezoid * torch.exp(-t.square() / 2)


def sigreg(z: Tensor, directions: int = 256, knots: int = 17, t_max: float = 3.0,
           generator: torch.Generator | None = None) -> Tensor:
    """SIGReg of embeddings ``z [..., N, D]``: N samples per group (leading dims), a scalar.

    For M random unit directions a, the projections h = z a are tested against N(0, 1) with
    the Epps-Pulley statistic N * int |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, where
    phi_N(t) = mean_n exp(i t h_n); averaged over directions and groups. Under the null it is
    ~1.05 whatever N (``sigreg_null_mean``); away from it, it grows like N (collapse to one
    point: ~0.4 N). Computed in float32.
    """
    N, D = z.shape[-2:]
    A = torch.randn(D, directions, generator=generator).to(z.device)
    A = A / A.norm(dim=0)  # [D, M] unit directions
    t, weights = (x.to(z.device) for x in sigreg_quadrature(knots, t_max))
    with torch.autocast(z.device.type, enabled=False):  # float32 even under bf16 autocast: cos/sin need it
        x = (z.float() @ A).unsqueeze(-1) * t  # [..., N, M, knots]
        err = (x.cos().mean(-3) - torch.exp(-t.square() / 2)).square() + x.sin().mean(-3).square()  # [..., M, knots]
        return (err @ weights).mean() * N


def sigreg_null_mean(knots: int = 17, t_max: float = 3.0) -> float:
    """E[SIGReg] for i.i.d. N(0, I) samples: sum_k w_k (1 - exp(-t_k^2)) (Var of the ECF times N)."""
    t, weights = sigreg_quadrature(knots, t_max)
    return float((weights * (1 - torch.exp(-t.square()))).sum())


# -- transformer parts ---------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x [B, L, W]``, ``mask [L, L]`` bool (True: may attend) -> ``[B, L, W]``."""
        B, L, W = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, L, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, W))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block; with ``conditioned`` an adaLN-Zero block (DiT): a per-token
    condition sets the norms' shift/scale and the residual gates (zero at init)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, conditioned: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not conditioned, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not conditioned, eps=1e-6)
        self.mlp = MLP(width, int(mlp_ratio * width))
        self.modulation = nn.Linear(width, 6 * width) if conditioned else None
        if conditioned:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """``x [B, L, W]``; ``cond [B, L, W]`` (conditioned blocks only)."""
        if self.modulation is None:
            x = x + self.attn(self.norm1(x), mask)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, mask)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


# -- encoder and predictor ----------------------------------------------------------------
class Encoder(nn.Module):
    """ViT: patchify, K learned summary tokens (CLS for K=1) + patch tokens, blocks, final
    LayerNorm, then a BatchNorm MLP projector (as LeWorldModel) of the summary tokens, or with
    ``tokens="patches"`` of the patch tokens themselves: a spatial latent, each token tied to
    its place in the frame. The hidden BatchNorm keeps the batch spread at O(1) from the first
    step: near collapse SIGReg's pull is second order (measured: 16 px Wall frames, whose CLS
    outputs start ~0.002 apart, stayed collapsed for 600 SIGReg-only steps without it). Eval
    mode uses its running statistics."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        W, n = cfg.width, (cfg.image_size // cfg.patch_size) ** 2
        summaries = cfg.num_tokens if cfg.tokens == "summary" else 0
        self.patch_embed = nn.Conv2d(3, W, cfg.patch_size, stride=cfg.patch_size)
        self.summary = nn.Parameter(torch.randn(1, summaries, W) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, summaries + n, W) * 0.02)
        self.blocks = nn.ModuleList(Block(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(W, eps=1e-6)
        self.projector = nn.Sequential(nn.Linear(W, 2 * W), nn.BatchNorm1d(2 * W), nn.GELU(), nn.Linear(2 * W, cfg.embed_dim))
        self.num_tokens = cfg.num_tokens

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, 3, H, W]`` float in [0, 1] -> embeddings ``[N, K, D]``."""
        patches = self.patch_embed(x * 2 - 1).flatten(2).transpose(1, 2)  # [N, n, W]
        tokens = torch.cat([self.summary.expand(len(x), -1, -1), patches], dim=1) + self.pos  # [N, K + n, W]
        for block in self.blocks:
            tokens = block(tokens)
        kept = self.norm(tokens[:, : self.num_tokens]).flatten(0, 1)  # [N*K, W]: the summaries, or all patches
        return self.projector(kept).view(len(x), self.num_tokens, -1)  # [N, K, D]


class Predictor(nn.Module):
    """Causal transformer over the tokens of T frames; frame t's tokens see frames <= t and
    carry action a_t (frame t -> t+1) through adaLN-Zero; outputs frame t+1's embeddings.
    With ``proprio_dim`` > 0 each frame's (normalised) proprio is added to its tokens and a
    head predicts frame t+1's proprio from them, as DINO-WM feeds proprio to its predictor."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        W, K, P = cfg.pred_width, cfg.num_tokens, cfg.proprio_dim
        self.embed = nn.Linear(cfg.embed_dim, W)
        self.action_embed = nn.Sequential(nn.Linear(cfg.action_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.proprio_embed = nn.Linear(P, W) if P else None
        self.time_pos = nn.Parameter(torch.randn(1, cfg.history, 1, W) * 0.02)
        self.token_pos = nn.Parameter(torch.randn(1, 1, K, W) * 0.02)
        self.blocks = nn.ModuleList(Block(W, cfg.pred_heads, cfg.mlp_ratio, conditioned=True) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(W, eps=1e-6)
        self.out = nn.Linear(W, cfg.embed_dim)
        self.proprio_out = nn.Linear(W, P) if P else None
        self.history = cfg.history

    def forward(self, z: Tensor, actions: Tensor, proprio: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``z [B, T, K, D]``, ``actions [B, T, Aw]`` (T <= history), ``proprio [B, T, P]`` when
        the predictor has a proprio input -> (``[B, T, K, D]``, ``[B, T, P]`` or None)."""
        B, T, K, _ = z.shape
        if T > self.history:
            raise ValueError(f"the predictor sees at most {self.history} frames, got {T}")
        x = self.embed(z) + self.time_pos[:, :T] + self.token_pos  # [B, T, K, W]
        if self.proprio_embed is not None:
            if proprio is None or proprio.shape[:2] != (B, T):
                raise ValueError(f"this predictor needs proprio [{B}, {T}, P], got {None if proprio is None else list(proprio.shape)}")
            x = x + self.proprio_embed(proprio)[:, :, None]
        x = x.reshape(B, T * K, -1)  # [B, T*K, W]
        cond = self.action_embed(actions).repeat_interleave(K, dim=1)  # [B, T*K, W]
        frame = torch.arange(T, device=z.device).repeat_interleave(K)
        mask = frame[:, None] >= frame[None, :]  # [T*K, T*K] frame-causal
        for block in self.blocks:
            x = block(x, mask, cond)
        h = self.norm(x).reshape(B, T, K, -1)  # [B, T, K, W]
        next_proprio = None if self.proprio_out is None else self.proprio_out(h.mean(dim=2))  # [B, T, P]
        return self.out(h), next_proprio


class JEPA(nn.Module):
    """Encoder + predictor (+ pose probe). ``encode`` frames, ``predict`` next embeddings,
    ``read_pose`` an embedding's pose features; ``jepa_loss`` trains them."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        # The probe is an MLP rather than linear: the angle's (cos, sin) is not linear in a pose-aware code.
        KD, W = cfg.num_tokens * cfg.embed_dim, cfg.pred_width
        self.probe = nn.Sequential(nn.Linear(KD, W), nn.GELU(), nn.Linear(W, cfg.probe_dim)) if cfg.probe_dim else None
        # normalisation of the training data's proprio and pose features (set by wmplan-train-jepa,
        # saved with the weights only when the model has that input or head, so older folders load)
        for name, dim in (("proprio", cfg.proprio_dim), ("pose", cfg.probe_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim), persistent=bool(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim), persistent=bool(dim))

    def encode(self, frames: Tensor) -> Tensor:
        """``frames [N, 3, H, W]`` uint8, or float in [0, 1] -> ``[N, K, D]``."""
        size = self.cfg.image_size
        if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, size, size):
            raise ValueError(f"JEPA expects frames [N, 3, {size}, {size}], got {list(frames.shape)}")
        x = frames.float() / 255 if frames.dtype == torch.uint8 else frames.float()
        return self.encoder(x.to(self.encoder.pos.device))

    def encode_clips(self, pixels: Tensor) -> Tensor:
        """``pixels uint8 [B, T, H, W, 3]`` -> ``[B, T, K, D]``."""
        B, T = pixels.shape[:2]
        return self.encode(pixels.flatten(0, 1).permute(0, 3, 1, 2)).view(B, T, self.cfg.num_tokens, -1)

    def predict(self, z: Tensor, actions: Tensor, proprio: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``z [B, T, K, D]``, ``actions [B, T, Aw]`` (a_t: frame t -> t+1), normalised ``proprio
        [B, T, P]`` (with ``proprio_dim`` > 0) -> (z_{t+1} ``[B, T, K, D]``, proprio_{t+1} ``[B, T, P]`` or None)."""
        return self.predictor(z, actions, proprio)

    def normalize_proprio(self, proprio: Tensor) -> Tensor:
        """Raw proprio ``[..., P]`` -> the normalised proprio the predictor reads and predicts."""
        if proprio.shape[-1] != self.cfg.proprio_dim:
            raise ValueError(f"proprio must be [..., {self.cfg.proprio_dim}], got {list(proprio.shape)}")
        return (proprio.float().to(self.proprio_mean.device) - self.proprio_mean) / self.proprio_std

    def normalize_pose(self, pose: Tensor) -> Tensor:
        """Raw pose features ``[..., F]`` -> the normalised targets the probe is trained on."""
        if pose.shape[-1] != self.cfg.probe_dim:
            raise ValueError(f"pose features must be [..., {self.cfg.probe_dim}], got {list(pose.shape)}")
        return (pose.float().to(self.pose_mean.device) - self.pose_mean) / self.pose_std

    def probe_pose(self, z: Tensor) -> Tensor:
        """Embeddings ``[..., K, D]`` -> normalised pose features ``[..., F]`` (the probe's output)."""
        if self.probe is None:
            raise ValueError("this JEPA has no pose probe (trained with model.probe_dim=0)")
        return self.probe(z.flatten(-2))

    def read_pose(self, z: Tensor) -> Tensor:
        """Embeddings ``[..., K, D]`` -> pose features ``[..., F]`` in the env's units."""
        return self.probe_pose(z).float() * self.pose_std + self.pose_mean

    def action_embedding_rms(self, actions: Tensor) -> float:
        """RMS of the predictor's action embedding of ``actions [B, T, Aw]`` (NanoWM's diagnostic)."""
        device = self.encoder.pos.device
        return self.predictor.action_embed(actions.to(device).float()).pow(2).mean().sqrt().item()


def jepa_loss(model: JEPA, pixels: Tensor, actions: Tensor, sigreg_weight: float, directions: int = 256,
              knots: int = 17, generator: torch.Generator | None = None, proprio: Tensor | None = None,
              proprio_weight: float = 1.0, pose: Tensor | None = None, probe_weight: float = 1.0
              ) -> tuple[Tensor, dict[str, float]]:
    """Teacher-forced next-embedding MSE + ``sigreg_weight`` * SIGReg (per time step, over the batch)
    (+ ``proprio_weight`` * next-proprio MSE, normalised, when the model reads proprio)
    (+ ``probe_weight`` * the pose probe's MSE, normalised, on encoded and on predicted
    embeddings, when the model has a probe: so the encoder keeps the pose and the predictor
    predicts it).

    ``pixels uint8 [B, T, H, W, 3]``, ``actions [B, T-1, Aw]``, raw ``proprio [B, T, P]``, raw
    pose features ``pose [B, T, F]``; gradients reach both the prediction and its target (no
    stop-gradient, no EMA)."""
    z = model.encode_clips(pixels)  # [B, T, K, D]
    if model.cfg.proprio_dim and proprio is None:
        raise ValueError("this JEPA reads proprio (proprio_dim > 0): pass the clips' proprio")
    p = model.normalize_proprio(proprio) if model.cfg.proprio_dim else None  # [B, T, P]
    pred, pred_p = model.predict(z[:, :-1], actions.to(z.device, z.dtype), None if p is None else p[:, :-1])
    pred_loss = F.mse_loss(pred.float(), z[:, 1:].float())
    reg = sigreg(z.float().flatten(2).transpose(0, 1), directions, knots, generator=generator)  # [T, B, K*D]
    loss = pred_loss + sigreg_weight * reg
    stats = {"pred": pred_loss.item(), "sigreg": reg.item()}
    if p is not None:
        proprio_loss = F.mse_loss(pred_p.float(), p[:, 1:])
        loss = loss + proprio_weight * proprio_loss
        stats["proprio"] = proprio_loss.item()
    if model.probe is not None:
        if pose is None:
            raise ValueError("this JEPA has a pose probe (probe_dim > 0): pass the clips' pose features")
        target = model.normalize_pose(pose)  # [B, T, F]
        probe_loss = (F.mse_loss(model.probe_pose(z).float(), target)
                      + F.mse_loss(model.probe_pose(pred).float(), target[:, 1:]))
        loss = loss + probe_weight * probe_loss
        stats["probe"] = probe_loss.item()
    return loss, {"loss": loss.item(), **stats}


# -- layout ------------------------------------------------------------------------------------
def tokens_to_latents(z: Tensor) -> Tensor:
    """``[..., K, D]`` -> ``[..., D, r, r]`` (r = sqrt(K), tokens row-major)."""
    K, D = z.shape[-2:]
    r = math.isqrt(K)
    return z.transpose(-1, -2).reshape(*z.shape[:-2], D, r, r)


def latents_to_tokens(x: Tensor) -> Tensor:
    """``[..., D, r, r]`` -> ``[..., K, D]``; inverse of ``tokens_to_latents``."""
    return x.flatten(-2).transpose(-1, -2)


# -- folders -----------------------------------------------------------------------------------
def save_jepa(model: JEPA, folder: str | Path, meta: dict) -> None:
    """Write ``config.json`` (format, model config, ``meta``) and ``model.safetensors`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    config = {**meta, "format": FORMAT, "model": dataclasses.asdict(model.cfg)}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=1, sort_keys=True))


def read_jepa_config(folder: str | Path) -> dict:
    """The validated ``config.json`` of a JEPA folder (``FileNotFoundError`` / ``ValueError``)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"JEPA folder {folder} does not exist")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"JEPA folder {folder} has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{folder} is not a wmplan JEPA folder (format {found!r}, expected {FORMAT!r})")
    try:
        JEPAConfig(**config["model"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: bad model config ({e})") from None
    return config


def load_jepa(folder: str | Path) -> tuple[JEPA, dict]:
    """``(model in eval mode, config.json)`` from a folder written by ``save_jepa``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_jepa_config(folder)
    weights = Path(folder).expanduser() / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"JEPA folder {folder} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read {weights}: {e}") from None
    model = JEPA(JEPAConfig(**config["model"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not match its config.json: {e}") from None
    return model.eval().requires_grad_(False), config
