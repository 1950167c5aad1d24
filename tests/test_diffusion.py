"""Objectives, schedules, min-SNR weights and the diffusion-forcing training loss."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from torch import nn

from wmplan.config_dir import CONFIG_DIR
from wmplan.models.diffusion import Diffusion, DiffusionConfig

ALLOWED = [
    (objective, schedule, ztsnr)
    for objective, schedule, ztsnr in itertools.product(
        ("eps", "v", "x", "flow"), ("linear", "squaredcos_cap_v2"), (False, True))
    if not (objective == "eps" and ztsnr)
]


def make(objective: str = "v", schedule: str = "squaredcos_cap_v2", ztsnr: bool = True, **kw) -> Diffusion:
    return Diffusion(DiffusionConfig(objective=objective, schedule=schedule, zero_terminal_snr=ztsnr, **kw))


class PerFrameDenoiser(nn.Module):
    """Stand-in for NanoWM: a per-pixel MLP on (x_t, frame mean of x_t, noise level, action)."""

    def __init__(self, channels: int = 2, action_dim: int = 3, proprio_dim: int = 0, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2 * channels + 2 + action_dim, hidden), nn.SiLU(), nn.Linear(hidden, channels))
        self.proprio = nn.Linear(proprio_dim + 2, proprio_dim) if proprio_dim else None
        self.calls: list[dict] = []

    def forward(self, x, t, actions, proprio=None, action_mask=None):
        self.calls.append({"t": t.clone(), "actions": actions.clone(), "action_mask": action_mask})
        if action_mask is not None:
            actions = actions * action_mask[..., None]
        b, n, c, h, w = x.shape
        level = t[..., None] / 1000.0
        cond = torch.cat([x.mean((3, 4)), torch.sin(3 * level), torch.cos(3 * level), actions], -1)  # [B, T, C+2+Aw]
        feats = torch.cat([x.permute(0, 1, 3, 4, 2), cond[:, :, None, None].expand(b, n, h, w, -1)], -1)
        out = self.net(feats).permute(0, 1, 4, 2, 3)
        out_p = None if proprio is None else self.proprio(torch.cat([proprio, level, level], -1))
        return out, out_p


# -- schedules ----------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("ztsnr", [False, True])
def test_alphas_cumprod_match_diffusers(schedule: str, ztsnr: bool) -> None:
    ours = make("v", schedule, ztsnr).alphas_cumprod
    ref = DDIMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=ztsnr).alphas_cumprod
    assert torch.equal(ours, ref)
    if ztsnr:  # Lin et al.: s <- (s - s_T) s_0 / (s_0 - s_T) keeps abar_0 and zeroes abar_T
        s = make("v", schedule, False).alphas_cumprod.double().sqrt()
        rescaled = ((s - s[-1]) * s[0] / (s[0] - s[-1])) ** 2
        assert ours[-1] == 0
        torch.testing.assert_close(ours.double(), rescaled, atol=1e-5, rtol=1e-4)
    assert make("flow", schedule, ztsnr=False).alphas_cumprod is None  # flow has no beta schedule


@pytest.mark.parametrize("steps", [1, 3, 10, 16, 50, 1000])
def test_sampler_timesteps_are_diffusers_trailing(steps: int) -> None:
    ref = DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(steps)
    levels = make().sampler_timesteps(steps)
    assert levels[0] == -1 and levels[-1] == 999  # clean, then exactly the terminal step
    assert torch.equal(levels[1:].flip(0).long(), ref.timesteps)
    flow = make("flow", ztsnr=False).sampler_timesteps(steps)
    torch.testing.assert_close(flow, torch.linspace(0, 1000, steps + 1))


def test_clean_level_has_unit_alpha() -> None:
    alpha, sigma = make().alpha_sigma(torch.tensor([-1.0, 999.0]))
    assert alpha.tolist() == [1.0, 0.0] and sigma.tolist() == [0.0, 1.0]


# -- targets, recovery, weights -------------------------------------------------------
@pytest.mark.parametrize("objective,schedule,ztsnr", ALLOWED)
def test_targets_round_trip(objective: str, schedule: str, ztsnr: bool) -> None:
    diffusion = make(objective, schedule, ztsnr)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 4, 3, 4, 4, generator=g)
    t = diffusion.level_to_timestep(torch.tensor([[0.0, 0.3, 0.7, 0.9999], [0.02, 0.5, 0.95, 0.1]]))
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, eps_hat = diffusion.predict_x0_eps(diffusion.target(x0, noise, t), x_t, t)
    # Recovering x0 from eps divides by sqrt(abar) (~5e-5 at the end), eps from x0 by sqrt(1-abar) (~1e-2 at t=0).
    torch.testing.assert_close(x0_hat, x0, atol=1e-2 if objective == "eps" else 1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=1e-4 if objective == "x" else 1e-5, rtol=0)


@pytest.mark.parametrize("objective,ztsnr", [("eps", False), ("x", True), ("v", True), ("flow", False)])
def test_min_snr_weight_is_x0_space_min_snr(objective: str, ztsnr: bool) -> None:
    """weight * |out - target|^2 == min(snr, gamma) * |x0_hat - x0|^2 for every target."""
    gamma = 5.0
    diffusion = make(objective, "squaredcos_cap_v2", ztsnr, snr_gamma=gamma)
    g = torch.Generator().manual_seed(1)
    x0, noise, delta = (torch.randn(1, 6, 2, 3, 3, generator=g) for _ in range(3))
    t = diffusion.level_to_timestep(torch.tensor([[0.01, 0.2, 0.4, 0.6, 0.8, 0.97]]))
    x_t = diffusion.q_sample(x0, t, noise)
    out = diffusion.target(x0, noise, t) + delta
    x0_hat, _ = diffusion.predict_x0_eps(out, x_t, t)
    alpha, sigma = diffusion.alpha_sigma(t)
    snr = alpha**2 / sigma**2
    lhs = diffusion.loss_weight(t) * delta.pow(2).flatten(2).sum(-1)
    rhs = snr.clamp(max=gamma) * (x0_hat - x0).pow(2).flatten(2).sum(-1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-3, atol=1e-5)
    explicit = {"eps": snr.clamp(max=gamma) / snr, "x": snr.clamp(max=gamma),
                "v": snr.clamp(max=gamma) / (snr + 1)}
    if objective in explicit:
        torch.testing.assert_close(diffusion.loss_weight(t), explicit[objective])


def test_min_snr_weights_finite_at_snr_zero_and_infinity() -> None:
    ends = torch.tensor([0.0, 999.0])
    for objective in ("x", "v"):  # abar = 0 at the ZTSNR terminal step
        w = make(objective).loss_weight(ends)
        assert torch.isfinite(w).all() and w[1] == 0
    assert make("eps", "linear", False).loss_weight(ends).tolist() == pytest.approx([5.0 / 9999.0, 1.0], rel=1e-3)
    flow = make("flow", ztsnr=False).loss_weight(torch.tensor([0.0, 1000.0]))  # snr = inf, 0
    assert flow.tolist() == [0.0, 0.0]
    assert torch.equal(make(snr_gamma=None).loss_weight(ends), torch.ones(2))


def test_logit_normal_timesteps() -> None:
    diffusion = make(logit_mean=1.0, logit_std=0.5)
    t = diffusion.draw_training_timesteps((4000,), torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and torch.equal(t, t.floor())
    assert t.median() / 1000 == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=0.02)
    again = diffusion.draw_training_timesteps((4000,), torch.Generator().manual_seed(0))
    other = diffusion.draw_training_timesteps((4000,), torch.Generator().manual_seed(1))
    assert torch.equal(t, again) and not torch.equal(t, other)
    s = make("flow", ztsnr=False).draw_training_timesteps((4000,), torch.Generator().manual_seed(0)) / 1000
    assert 0 < s.min() and s.max() < 1 and not torch.equal(s * 1000, (s * 1000).floor())


# -- config ----------------------------------------------------------------------------
def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        DiffusionConfig(objective="eps", zero_terminal_snr=True)
    for bad in ({"objective": "score"}, {"schedule": "cosine"}, {"timestep_sampling": "normal"},
                {"context_noise_level": 1.0}, {"action_dropout": -0.1}, {"logit_std": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiffusionConfig(**bad)


def test_config_files_are_exactly_the_dataclass() -> None:
    # The objective files hold every field but the context's, which train.yaml sets once for all
    # (context_frames follows the env's protocol history).
    context = {"context_frames", "context_noise_level"}
    fields = {f.name for f in dataclasses.fields(DiffusionConfig)}
    files = sorted((CONFIG_DIR / "diffusion").glob("*.yaml"))
    assert {f.stem for f in files} >= {"v_cosine_ztsnr", "x_cosine_ztsnr", "eps_linear", "flow"}
    for path in files:
        values = yaml.safe_load(path.read_text())
        assert set(values) == fields - context, path.name
        DiffusionConfig(**values)
    assert set(yaml.safe_load((CONFIG_DIR / "train.yaml").read_text())["diffusion"]) == context
    defaults = {k: v for k, v in dataclasses.asdict(DiffusionConfig()).items() if k not in context}
    assert yaml.safe_load((CONFIG_DIR / "diffusion/v_cosine_ztsnr.yaml").read_text()) == defaults


# -- training loss ------------------------------------------------------------------------
@pytest.mark.parametrize("objective,schedule,ztsnr", ALLOWED)
def test_training_loss_finite_for_every_allowed_config(objective: str, schedule: str, ztsnr: bool) -> None:
    diffusion = make(objective, schedule, ztsnr, timestep_sampling="uniform", action_dropout=0.3)
    model = PerFrameDenoiser(proprio_dim=2)
    g = torch.Generator().manual_seed(0)
    latents, actions, proprio = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 3, 3), torch.randn(3, 4, 2)
    loss, per_frame = diffusion.training_loss(model, latents, actions, proprio, g)
    assert loss.ndim == 0 and torch.isfinite(loss) and per_frame.shape == (4,)
    assert per_frame[0] == 0 and torch.isfinite(per_frame).all()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_training_loss_diffusion_forcing_inputs() -> None:
    diffusion = make(context_frames=2, action_dropout=0.25)
    model = PerFrameDenoiser()
    latents, actions = torch.randn(64, 5, 2, 4, 4), torch.randn(64, 4, 3)
    loss, per_frame = diffusion.training_loss(model, latents, actions, None, torch.Generator().manual_seed(0))
    call = model.calls[-1]
    assert (call["t"][:, :2] == 20).all()  # context frames at 0.02 T
    assert (call["t"][:, 2:].std(dim=1) > 0).float().mean() > 0.9  # independent per-frame levels
    assert (call["actions"][:, 0] == 0).all() and torch.equal(call["actions"][:, 1:], actions)
    assert call["action_mask"].float().mean().item() == pytest.approx(0.75, abs=0.06)
    assert per_frame[:2].tolist() == [0.0, 0.0] and loss.item() == pytest.approx(per_frame[2:].mean().item(), rel=1e-5)
    again, _ = diffusion.training_loss(model, latents, actions, None, torch.Generator().manual_seed(0))
    assert again == loss
    with pytest.raises(ValueError, match="context_frames"):
        make(context_frames=5).training_loss(model, latents, actions, None, torch.Generator())


@pytest.mark.parametrize("objective", ["v", "flow"])
def test_training_reduces_loss(objective: str) -> None:
    torch.manual_seed(0)
    diffusion = make(objective, ztsnr=objective != "flow")
    model = PerFrameDenoiser(hidden=64)
    g = torch.Generator().manual_seed(0)
    colors = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # trivial data: frames of one of two colours
    latents = colors[torch.arange(16) % 2][:, None, :, None, None].expand(16, 3, 2, 4, 4)
    actions = torch.zeros(16, 2, 3)

    def mean_loss() -> float:
        eval_g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return sum(diffusion.training_loss(model, latents, actions, None, eval_g)[0].item() for _ in range(20)) / 20

    before = mean_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = diffusion.training_loss(model, latents, actions, None, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert mean_loss() < 0.2 * before


def test_training_loss_with_nanowm() -> None:
    nanowm = pytest.importorskip("wmplan.models.nanowm")
    cfg = nanowm.nanowm_config("tiny", patch_size=2, latent_channels=2, latent_size=4, action_dim=3, proprio_dim=2)
    model = nanowm.NanoWM(cfg)
    diffusion = make(action_dropout=0.2)
    loss, per_frame = diffusion.training_loss(
        model, torch.randn(2, 4, 2, 4, 4), torch.randn(2, 3, 3), torch.randn(2, 4, 2), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and per_frame.shape == (4,)
