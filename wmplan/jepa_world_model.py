"""A JEPA's own deterministic predictor as a world model the MPC planners drive.

    wmplan-plan env=wall world_model=jepa:outputs/jepa/wall objective=dino_wm_maze

``JEPAWorldModel`` follows the contract of ``OracleModel`` and ``WorldModel``
(``wmplan.planners.evaluate.model_and_objective``): ``encode(obs)`` gives latents
``[N, D, r, r]`` (the raw embeddings in the codec's layout, r = sqrt(K)) and
``make_rollout_fn(context)`` a rollout ``actions [B, S, H, Aw] -> latents [B, S, H, D, r, r]``.
As in LeWorldModel, the context is encoded once per replan (by ``encode``) and all S
candidates of all B episodes run as one batch of B * S sequences through the predictor,
autoregressively over the last ``history`` embeddings. No noise: the seeds are ignored.
A JEPA trained with ``model.proprio_dim`` > 0 also reads and predicts the (normalised) proprio,
so objectives may score it (``proprio_weight``); a pixels-only JEPA has none, so they must not.
A JEPA trained with ``model.probe_dim`` > 0 reads the env's pose features from every encoded
and predicted embedding (``pose``), which ``pose_weight`` scores with the env's ``pose_cost``;
given the planning env's ``pose_from_proprio``, the features the proprio carries exactly (PushT:
the agent's xy) come from the observed or predicted proprio instead of the probe.
``rollout(context, actions)`` is ``WorldModel.rollout``'s contract, so the diagnostics
(``wmplan.diagnostics.action_sensitivity``) measure it as they measure a NanoWM.

``world_model=jepa:<folder>+<folder>+...`` plans with an ensemble (``JEPAEnsemble``, as PETS
ensembles its dynamics models): every member predicts every candidate, and a pose objective
averages the members' costs, so a push one model alone misjudges is not chosen on its word.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from wmplan.hardware import autocast, resolve_precision
from wmplan.models.jepa import WEIGHTS_FILE, JEPA, latents_to_tokens, load_jepa, tokens_to_latents
from wmplan.planners.base import Goal, Prediction, RolloutFn

PREFIX = "jepa:"
ENSEMBLE_SEPARATOR = "+"


def load_jepa_world_model(spec: str | Path, precision: str = "auto",
                          pose_from_proprio: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
    """``jepa:<folder>`` -> a ``JEPAWorldModel``; ``jepa:<folder>+<folder>+...`` -> a ``JEPAEnsemble``."""
    spec = str(spec)
    folders = (spec[len(PREFIX):] if spec.startswith(PREFIX) else spec).split(ENSEMBLE_SEPARATOR)
    if any(not folder for folder in folders):
        raise ValueError(f"world_model={spec!r} names an empty folder: separate ensemble members with one '+'")
    members = [JEPAWorldModel.from_folder(folder, precision, pose_from_proprio) for folder in folders]
    return members[0] if len(members) == 1 else JEPAEnsemble(members)


class JEPAWorldModel:
    """Encode observations with a JEPA's encoder; roll candidates out with its predictor."""

    sampler = None  # deterministic: nothing to sample

    def __init__(self, model: JEPA, config: dict, precision: str = "auto", checkpoint_hash: str | None = None,
                 pose_from_proprio: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        self.model = model.eval().requires_grad_(False)
        self.uses_proprio = bool(model.cfg.proprio_dim)
        self.has_pose_probe = bool(model.cfg.probe_dim)
        self.pose_from_proprio = pose_from_proprio if self.uses_proprio else None
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(precision, self.device)
        self.history = self.context_frames = int(model.cfg.history)
        self.action_dim = int(model.cfg.action_dim)
        env = config.get("env") or {}
        self.env_id, self.frameskip, self.resolution = env.get("id"), env.get("frameskip"), env.get("resolution")
        stats = config.get("action_stats")  # absent in folders from before it was recorded
        self.action_std = None if stats is None else np.asarray(stats["std"], dtype=np.float32)  # [A] env actions
        self.checkpoint_hash = checkpoint_hash

    @classmethod
    def from_folder(cls, folder: str | Path, precision: str = "auto",
                    pose_from_proprio: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> "JEPAWorldModel":
        """Load a folder written by ``wmplan-train-jepa`` (``jepa:`` prefix allowed)."""
        folder = str(folder)
        folder = Path(folder[len(PREFIX):] if folder.startswith(PREFIX) else folder).expanduser()
        model, config = load_jepa(folder)
        return cls(model, config, precision, checkpoint_hash=_sha256(folder / WEIGHTS_FILE),
                   pose_from_proprio=pose_from_proprio)

    def check_env(self, env_id: str, frameskip: int, resolution: int) -> None:
        """A ValueError naming the first setting in which the planning env differs from training."""
        for name, trained, given in (("env id", self.env_id, env_id), ("frameskip", self.frameskip, frameskip),
                                     ("resolution", self.resolution, resolution)):
            if str(trained) != str(given):
                raise ValueError(f"world model was trained with {name} {trained}, but the planning env has {given}")

    @torch.no_grad()
    def encode(self, obs: dict[str, Any]) -> Goal:
        """obs pixels uint8 [N, H, W, 3] (or [N, T, H, W, 3]) -> latents [N, (T,) D, r, r]
        (float32), proprio [N, (T,) P] normalised (None for a pixels-only JEPA) and the pose
        probe's features [N, (T,) F] (None without a probe)."""
        pixels = torch.as_tensor(np.asarray(obs["pixels"]))
        if pixels.dtype != torch.uint8 or pixels.ndim not in (4, 5):
            raise ValueError(f"JEPA world model expects pixels uint8 [N, (T,) H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
        lead = pixels.shape[:-3]
        with autocast(self.precision, self.device):
            z = self.model.encode(pixels.reshape(-1, *pixels.shape[-3:]).to(self.device).permute(0, 3, 1, 2))  # [N*T, K, D]
        latents = tokens_to_latents(z.float())  # [N*T, D, r, r]
        proprio = None
        if self.uses_proprio:
            if obs.get("proprio") is None:
                raise ValueError("this JEPA reads proprio: obs needs 'proprio'")
            proprio = self.model.normalize_proprio(torch.as_tensor(np.asarray(obs["proprio"])))
            if proprio.shape[:-1] != lead:
                raise ValueError(f"obs proprio {list(proprio.shape)} does not match pixels {list(pixels.shape)}")
        pose = self.read_pose(z.float(), proprio).reshape(*lead, -1) if self.has_pose_probe else None
        return {"latents": latents.reshape(*lead, *latents.shape[1:]), "proprio": proprio, "pose": pose}

    def make_rollout_fn(self, context: dict[str, Any]) -> RolloutFn:
        """Rollouts from ``context`` latents [B, T, D, r, r], actions [B, T-1, Aw] (and the
        normalised proprio [B, T, P] of a JEPA that reads it)."""
        z0 = latents_to_tokens(context["latents"].float().to(self.device))  # [B, T, K, D]
        a0 = context["actions"].float().to(self.device)  # [B, T-1, Aw]
        B, T = z0.shape[:2]
        if a0.shape != (B, T - 1, self.action_dim):
            raise ValueError(f"context actions must be [{B}, {T - 1}, {self.action_dim}], got {list(a0.shape)}")
        p0 = None
        if self.uses_proprio:
            p0 = context.get("proprio")
            if p0 is None or tuple(p0.shape) != (B, T, self.model.cfg.proprio_dim):
                raise ValueError(f"this JEPA reads proprio: context proprio must be [{B}, {T}, {self.model.cfg.proprio_dim}], "
                                 f"got {None if p0 is None else list(p0.shape)}")
            p0 = p0.float().to(self.device)[:, -self.history:]
        z0, a0 = z0[:, -self.history:], a0[:, max(0, T - self.history):]  # the frames the predictor sees

        def rollout(actions: torch.Tensor) -> Prediction:
            return self.roll_tokens(z0, a0, actions, p0)

        return rollout

    def rollout(self, context: dict[str, Any], actions: torch.Tensor, sampler: Any = None, seed: Any = 0) -> Prediction:
        """``WorldModel.rollout``'s contract: context latents [B, D, r, r] or [B, Tc, D, r, r]
        (+ the actions between context frames [B, Tc-1, Aw], + proprio [B, (Tc,) P] for a JEPA
        that reads it), actions [B, S, H, Aw] -> latents [B, S, H, D, r, r] and proprio
        [B, S, H, P] or None. ``sampler`` and ``seed`` are ignored: nothing is sampled."""
        latents = context["latents"]
        single = latents.ndim == 4
        latents = latents[:, None] if single else latents  # [B, Tc, D, r, r]
        between = context.get("actions")
        if between is None:
            between = torch.zeros(latents.shape[0], latents.shape[1] - 1, self.action_dim)
        proprio = context.get("proprio")
        if proprio is not None and single:
            proprio = proprio[:, None]  # [B, 1, P]
        return self.make_rollout_fn({"latents": latents, "actions": between, "proprio": proprio})(actions)

    def roll_tokens(self, z0: torch.Tensor, a0: torch.Tensor, actions: torch.Tensor,
                    p0: torch.Tensor | None = None) -> Prediction:
        """``z0 [B, Tc, K, D]``, ``a0 [B, Tc-1, Aw]``, ``actions [B, S, H, Aw]`` (, ``p0 [B, Tc, P]``)
        -> latents ``[B, S, H, D, r, r]``, proprio ``[B, S, H, P]`` and pose features ``[B, S, H, F]``
        (None where the model has none); gradients flow to ``actions`` when the caller enables them."""
        B, S, H, Aw = actions.shape
        if (B, Aw) != (z0.shape[0], self.action_dim):
            raise ValueError(f"actions must be [{z0.shape[0]}, S, H, {self.action_dim}], got {list(actions.shape)}")
        if not torch.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        Tc, K, D = z0.shape[1:]
        z = z0[:, None].expand(B, S, Tc, K, D).reshape(B * S, Tc, K, D)  # the context, encoded once, per candidate
        acts = torch.cat([a0[:, None].expand(B, S, Tc - 1, Aw).reshape(B * S, Tc - 1, Aw),
                          actions.to(self.device, torch.float32).reshape(B * S, H, Aw)], dim=1)  # [B*S, Tc-1+H, Aw]
        p = None if p0 is None else p0[:, None].expand(B, S, *p0.shape[1:]).reshape(B * S, Tc, -1)  # [B*S, Tc, P]
        for _ in range(H):
            n = z.shape[1]
            lo = max(0, n - self.history)
            with autocast(self.precision, self.device):
                nxt, nxt_p = self.model.predict(z[:, lo:], acts[:, lo:n], None if p is None else p[:, lo:])
            z = torch.cat([z, nxt[:, -1:].float()], dim=1)  # + [B*S, 1, K, D]
            if p is not None:
                p = torch.cat([p, nxt_p[:, -1:].float()], dim=1)  # + [B*S, 1, P]
        latents = tokens_to_latents(z[:, Tc:])  # [B*S, H, D, r, r]
        proprio = None if p is None else p[:, Tc:].reshape(B, S, H, -1)
        pose = self.read_pose(z[:, Tc:], None if p is None else p[:, Tc:]).reshape(B, S, H, -1) if self.has_pose_probe else None
        return {"latents": latents.reshape(B, S, H, *latents.shape[2:]), "proprio": proprio, "pose": pose}


    def read_pose(self, z: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """The probe's pose features of embeddings ``[..., K, D]``, with those the normalised
        ``proprio [..., P]`` carries taken from it (``pose_from_proprio``) -> ``[..., F]``."""
        pose = self.model.read_pose(z)
        if self.pose_from_proprio is None or proprio is None:
            return pose
        raw = proprio.reshape(*pose.shape[:-1], -1) * self.model.proprio_std + self.model.proprio_mean
        return self.pose_from_proprio(pose, raw)


class JEPAEnsemble:
    """Several JEPAs planning as one world model: each member encodes and rolls out every
    candidate. Their latents are flattened and concatenated, ``[..., sum_m D_m K_m, 1, 1]``, so
    members with other token layouts (summary or patch tokens) join; their proprio is
    concatenated too, and each member gets its own slices back. ``pose`` is the members' mean,
    with ``pose_members [M, ...]`` beside it for ``PoseCost``, which averages the members' costs
    (each against its own reading of the goal). The planners sample actions in the first
    member's data units (``action_std``)."""

    sampler = None

    def __init__(self, members: list[JEPAWorldModel]):
        first = members[0]
        for i, member in enumerate(members[1:], 1):
            for name, value, value_0 in _shared_settings(member, first):
                if value != value_0:
                    raise ValueError(f"ensemble member {i} has {name}={value}, member 0 has {value_0}: members must agree")
        self.members = members
        self.history = self.context_frames = first.history
        self.action_dim, self.action_std, self.precision = first.action_dim, first.action_std, first.precision
        self.env_id, self.frameskip, self.resolution = first.env_id, first.frameskip, first.resolution
        self.has_pose_probe = first.has_pose_probe
        self.uses_proprio = any(m.uses_proprio for m in members)
        self.checkpoint_hash = ENSEMBLE_SEPARATOR.join(m.checkpoint_hash for m in members)
        self.latent_shapes = [m.model.cfg.latent_shape for m in members]  # [D, r, r] each
        self.proprio_dims = [m.model.cfg.proprio_dim if m.uses_proprio else 0 for m in members]

    def check_env(self, env_id: str, frameskip: int, resolution: int) -> None:
        """``JEPAWorldModel.check_env`` (all members agree on the env: checked when built)."""
        self.members[0].check_env(env_id, frameskip, resolution)

    def encode(self, obs: dict[str, Any]) -> Goal:
        """``JEPAWorldModel.encode`` of every member, joined (``_join``)."""
        return self._join([member.encode(obs) for member in self.members])

    def make_rollout_fn(self, context: dict[str, Any]) -> RolloutFn:
        """Each member's rollout from its slice of ``context``; predictions joined (``_join``)."""
        flat = context["latents"][..., 0, 0]  # [B, T, sum D_m K_m]
        latents = [z.unflatten(-1, shape) for z, shape in  # M x [B, T, D_m, r_m, r_m]
                   zip(torch.split(flat, [math.prod(shape) for shape in self.latent_shapes], dim=-1), self.latent_shapes)]
        proprio = context.get("proprio")
        proprio = [None] * len(self.members) if proprio is None else torch.split(proprio, self.proprio_dims, dim=-1)
        rollouts = [m.make_rollout_fn({**context, "latents": z, "proprio": p if m.uses_proprio else None})
                    for m, z, p in zip(self.members, latents, proprio)]

        def rollout(actions: torch.Tensor) -> Prediction:
            return self._join([member_rollout(actions) for member_rollout in rollouts])

        return rollout

    rollout = JEPAWorldModel.rollout  # WorldModel.rollout's contract, built on make_rollout_fn as a member's

    def _join(self, outputs: list[dict]) -> dict:
        """Members' outputs -> latents flattened and concatenated ``[..., sum D_m K_m, 1, 1]``,
        proprio concatenated, ``pose`` averaged and ``pose_members`` stacked ``[M, ...]`` (None
        without probes)."""
        proprio = [o["proprio"] for o in outputs if o["proprio"] is not None]
        pose = torch.stack([o["pose"] for o in outputs]) if self.has_pose_probe else None  # [M, ...]
        latents = torch.cat([o["latents"].flatten(-3) for o in outputs], dim=-1)  # [..., sum D_m K_m]
        return {"latents": latents[..., None, None],
                "proprio": torch.cat(proprio, dim=-1) if proprio else None,
                "pose": None if pose is None else pose.mean(0), "pose_members": pose}


def _shared_settings(member: JEPAWorldModel, first: JEPAWorldModel) -> list[tuple[str, Any, Any]]:
    """(name, member's value, first member's value) of what ensemble members must share: the env,
    the context, the action width and the probe."""
    names = ("env_id", "frameskip", "resolution", "history", "action_dim", "has_pose_probe")
    return [(name, getattr(member, name), getattr(first, name)) for name in names]


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
