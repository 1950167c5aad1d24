"""Scheduling matrices, DDIM / flow-Euler steps, guidance and sliding-window rollouts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from diffusers import DDIMScheduler
from torch import nn

from wmplan.config_dir import CONFIG_DIR
from wmplan.models.diffusion import Diffusion, DiffusionConfig
from wmplan.models.sampling import SamplerConfig, ddim_step, generate, scheduling_matrix

SETUPS = {  # name: (objective, schedule, zero_terminal_snr) — every pairing the config allows
    "eps_linear": ("eps", "linear", False), "eps_cosine": ("eps", "squaredcos_cap_v2", False),
    "v_linear": ("v", "linear", False), "v_cosine_ztsnr": ("v", "squaredcos_cap_v2", True),
    "x_linear_ztsnr": ("x", "linear", True), "x_cosine": ("x", "squaredcos_cap_v2", False),
    "flow": ("flow", "squaredcos_cap_v2", False),
}
C, HW, AW, P = 2, 3, 4, 2


def make(setup: str, context_noise_level: float = 0.02) -> Diffusion:
    objective, schedule, ztsnr = SETUPS[setup]
    return Diffusion(DiffusionConfig(objective=objective, schedule=schedule, zero_terminal_snr=ztsnr,
                                     context_noise_level=context_noise_level))


def sampler(diffusion: Diffusion, **kw) -> SamplerConfig:
    return SamplerConfig(**kw)  # the sampler kind and context level come from the model


def fill(values: torch.Tensor, like_shape: tuple[int, ...]) -> torch.Tensor:
    """[B, T, >=k] -> [B, T, k, h, w] or [B, T, k]: the first k values spread over the frame."""
    k = like_shape[2]
    v = values[:, :, :k]
    return v[..., None, None].expand(*v.shape, *like_shape[3:]) if len(like_shape) == 5 else v


class Recorder(nn.Module):
    """Stand-in for NanoWM that records its calls; subclasses say what x0 each frame has."""

    def __init__(self, diffusion: Diffusion):
        super().__init__()
        self.diffusion = diffusion
        self.calls: list[dict] = []

    def clean(self, x: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, t, actions, proprio=None, action_mask=None):
        self.calls.append({"x": x.clone(), "t": t.clone(), "actions": actions.clone(), "mask": action_mask})
        if action_mask is not None:
            actions = actions * action_mask[..., None]
        outs = [self.express(self.clean(x, actions), x, t)]
        outs.append(None if proprio is None else self.express(fill(actions, proprio.shape), proprio, t))
        return tuple(outs)

    def express(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact model output for true clean frames x0 in this objective's target."""
        alpha, sigma = (c.reshape(*c.shape, *(1,) * (x_t.ndim - 2)) for c in self.diffusion.alpha_sigma(t))
        eps = (x_t - alpha * x0) / sigma.clamp(min=1e-12)
        return self.diffusion.target(x0, eps, t)


class ActionOracle(Recorder):
    """Knows the truth: frame t's clean latent is its action spread over the frame."""

    def clean(self, x, actions):
        return fill(actions, x.shape)


class Integrator(Recorder):
    """Causal oracle: frame t = (model input of frame t-1) + its action; exact when context is clean."""

    def clean(self, x, actions):
        return torch.cat([x[:, :1], x[:, :-1]], 1) + fill(actions, x.shape)


class RandomDenoiser(nn.Module):
    """Untrained per-frame network, for finiteness checks."""

    def __init__(self):
        super().__init__()
        self.net = nn.Conv2d(C + 1 + AW, C, 3, padding=1)
        self.proprio = nn.Linear(P + 1, P)

    def forward(self, x, t, actions, proprio=None, action_mask=None):
        b, n = x.shape[:2]
        cond = torch.cat([t[..., None] / 1000, actions], -1)[..., None, None].expand(b, n, -1, HW, HW)
        out = self.net(torch.cat([x, cond], 2).flatten(0, 1)).unflatten(0, (b, n))
        return out, None if proprio is None else self.proprio(torch.cat([proprio, t[..., None] / 1000], -1))


def tiny_nanowm(proprio_dim: int = 0):
    """A NanoWM with random weights everywhere (zero-initialised layers too, so every path counts)."""
    from wmplan.models.nanowm import NanoWM, nanowm_config

    cfg = nanowm_config("tiny", patch_size=1, latent_channels=C, latent_size=HW, action_dim=AW, proprio_dim=proprio_dim)
    model = NanoWM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs(b: int = 3, n_ctx: int = 1, horizon: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n_ctx, C, HW, HW, generator=g), torch.randn(b, n_ctx, P, generator=g),
            torch.randn(b, horizon, AW, generator=g))


# -- scheduling matrices -----------------------------------------------------------------
@pytest.mark.parametrize("mode,rows", [("full_sequence", lambda n, s: s + 1), ("pyramid", lambda n, s: s + n),
                                       ("sequential", lambda n, s: n * s + 1)])
@pytest.mark.parametrize("n_frames,steps", [(1, 1), (1, 5), (4, 1), (3, 4), (5, 7)])
def test_scheduling_matrix(mode: str, rows, n_frames: int, steps: int) -> None:
    m = scheduling_matrix(mode, n_frames, steps)
    assert m.shape == (rows(n_frames, steps), n_frames) and m.dtype == torch.long
    assert (m[0] == steps).all() and (m[-1] == 0).all()  # start at the terminal level, end clean
    drop = m[:-1] - m[1:]
    assert ((drop == 0) | (drop == 1)).all() and (drop.sum(0) == steps).all()  # every level visited once
    assert (drop.sum(1) >= 1).all()  # every row moves some frame
    assert (m[:, 1:] >= m[:, :-1]).all()  # later frames never less noisy
    if mode == "sequential":
        assert (drop.sum(1) == 1).all()
    if mode == "pyramid":
        assert torch.equal(m[1:, 1:], m[:-1, :-1])  # frame k lags frame k-1 by one row
    if mode == "full_sequence":
        assert (m == m[:, :1]).all()


def test_scheduling_matrix_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="diagonal"):
        scheduling_matrix("diagonal", 3, 2)


# -- single steps against diffusers --------------------------------------------------------
@pytest.mark.parametrize("setup,prediction_type", [("eps_linear", "epsilon"), ("v_cosine_ztsnr", "v_prediction"),
                                                    ("x_cosine", "sample"), ("v_linear", "v_prediction")])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(setup: str, prediction_type: str, eta: float) -> None:
    diffusion = make(setup)
    _, schedule, ztsnr = SETUPS[setup]
    ref = DDIMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=ztsnr, timestep_spacing="trailing",
                        prediction_type=prediction_type, clip_sample=False)
    ref.set_timesteps(10)
    levels = diffusion.sampler_timesteps(10)
    g = torch.Generator().manual_seed(0)
    for k in range(10, 0, -1):
        assert int(levels[k]) == int(ref.timesteps[10 - k])
        x_t, out = torch.randn(2, 1, C, HW, HW, generator=g), torch.randn(2, 1, C, HW, HW, generator=g)
        t_from, t_to = levels[k : k + 1], levels[k - 1 : k]
        x0, eps = diffusion.predict_x0_eps(out, x_t, t_from)
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(k)) if eta else None
        ours = ddim_step(diffusion, x0, eps, t_from, t_to, eta, noise)
        theirs = ref.step(out, int(levels[k]), x_t, eta=eta, variance_noise=noise)
        torch.testing.assert_close(x0, theirs.pred_original_sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours, theirs.prev_sample, atol=1e-4, rtol=1e-4)


def test_flow_step_is_euler() -> None:
    diffusion = make("flow")
    g = torch.Generator().manual_seed(0)
    x_t, velocity = torch.randn(2, 3, C, HW, HW, generator=g), torch.randn(2, 3, C, HW, HW, generator=g)
    t_from, t_to = torch.tensor([1000.0, 600.0, 250.0]), torch.tensor([750.0, 0.0, 125.0])
    x0, eps = diffusion.predict_x0_eps(velocity, x_t, t_from)
    stepped = ddim_step(diffusion, x0, eps, t_from, t_to, 0.0)
    euler = x_t + ((t_to - t_from) / 1000)[None, :, None, None, None] * velocity
    torch.testing.assert_close(stepped, euler, atol=1e-5, rtol=1e-5)


# -- generation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("schedule", ["sequential", "pyramid", "full_sequence"])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_oracle_denoiser_gives_exact_frames(setup: str, schedule: str, steps: int) -> None:
    diffusion = make(setup)
    context, context_proprio, actions = inputs(horizon=3)
    for eta in ([0.0] if diffusion.is_flow else [0.0, 0.8]):
        cfg = sampler(diffusion, steps=steps, schedule=schedule, eta=eta)
        latents, proprio = generate(ActionOracle(diffusion), diffusion, context, context_proprio, actions, cfg,
                                    window=4, generator=torch.Generator().manual_seed(0))
        # eps -> x0 divides by sqrt(abar) (5e-5 at the cosine schedule's end): float32 rounding grows.
        atol = 5e-3 if setup.startswith("eps") else 1e-4
        torch.testing.assert_close(latents, fill(actions, latents.shape), atol=atol, rtol=0)
        torch.testing.assert_close(proprio, actions[..., :P], atol=atol, rtol=0)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_samples_finite_for_every_allowed_config(setup: str) -> None:
    diffusion = make(setup)
    context, context_proprio, actions = inputs(horizon=5)
    for schedule in ("sequential", "full_sequence"):
        cfg = sampler(diffusion, steps=4, schedule=schedule, guidance_scale=2.0,
                      eta=0.0 if diffusion.is_flow else 1.0)
        latents, proprio = generate(RandomDenoiser(), diffusion, context, context_proprio, actions, cfg,
                                    window=3, generator=torch.Generator().manual_seed(0))
        assert latents.shape == (3, 5, C, HW, HW) and proprio.shape == (3, 5, P)
        assert torch.isfinite(latents).all() and torch.isfinite(proprio).all()


@pytest.mark.parametrize("n_ctx,window,horizon", [(1, 3, 7), (2, 4, 5), (1, 2, 3), (3, 4, 2)])
def test_sliding_window_uses_newest_frames_as_context(n_ctx: int, window: int, horizon: int) -> None:
    diffusion = make("flow", context_noise_level=0.0)  # level 0 is exactly clean for flow: the integrator is exact
    context, _, actions = inputs(n_ctx=n_ctx, horizon=horizon)
    model = Integrator(diffusion)
    cfg = sampler(diffusion, steps=2, schedule="sequential")
    latents, proprio = generate(model, diffusion, context, None, actions, cfg, window=window,
                                generator=torch.Generator().manual_seed(0))
    expected = context[:, -1:] + fill(actions, (*actions.shape[:2], C, HW, HW)).cumsum(1)
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=0)
    assert proprio is None and latents.shape[1] == horizon
    assert max(call["x"].shape[1] for call in model.calls) <= window
    assert all((call["actions"][:, 0] == 0).all() for call in model.calls)  # window start: null action


def test_model_sees_scheduled_levels_and_stabilized_context() -> None:
    diffusion = make("v_cosine_ztsnr", context_noise_level=0.1)
    context, _, actions = inputs(b=64, horizon=2)
    model = ActionOracle(diffusion)
    latents, _ = generate(model, diffusion, context, None, actions, sampler(diffusion, steps=2),
                          window=3, generator=torch.Generator().manual_seed(0))
    # Trailing levels for 2 steps are 999, 499; context and finished frames sit at 0.1 T = 100.
    expected = [[100, 999], [100, 499], [100, 100, 999], [100, 100, 499]]
    assert [call["t"][0].tolist() for call in model.calls] == expected
    alpha, sigma = diffusion.alpha_sigma(torch.tensor(100.0))
    for clean, shown in ((context[:, 0], model.calls[0]["x"][:, 0]), (latents[:, 0], model.calls[2]["x"][:, 1])):
        noise = (shown - alpha * clean) / sigma  # context and finished frames are noised, not clean
        assert noise.std().item() == pytest.approx(1.0, abs=0.1) and noise.mean().abs() < 0.1


def test_context_actions_reach_the_context_frames() -> None:
    diffusion = make("v_cosine_ztsnr")
    context, _, actions = inputs(n_ctx=3, horizon=1)
    context_actions = torch.randn(3, 2, AW)
    model = ActionOracle(diffusion)
    generate(model, diffusion, context, None, actions, sampler(diffusion, steps=2), window=4,
             generator=torch.Generator(), context_actions=context_actions)
    expected = torch.cat([torch.zeros(3, 1, AW), context_actions, actions], 1)
    assert all(torch.equal(call["actions"], expected) for call in model.calls)


@pytest.mark.parametrize("schedule", ["sequential", "pyramid", "full_sequence"])
def test_action_guidance(schedule: str) -> None:
    diffusion = Diffusion(DiffusionConfig(objective="x"))
    context, _, actions = inputs(horizon=3)
    truth = fill(actions, (*actions.shape[:2], C, HW, HW))
    for scale in (0.0, 1.0, 2.5):
        model = ActionOracle(diffusion)
        cfg = SamplerConfig(steps=3, schedule=schedule, guidance_scale=scale)
        latents, _ = generate(model, diffusion, context, None, actions, cfg, window=4,
                              generator=torch.Generator().manual_seed(0))
        # Masked actions give an unconditional prediction of 0, so guidance scales the conditional one.
        torch.testing.assert_close(latents, scale * truth, atol=1e-5, rtol=0)
        rows = scheduling_matrix(schedule, 3, 3).shape[0] - 1
        masks = [call["mask"] for call in model.calls]
        if scale == 1.0:  # scale 1 is the conditional pass alone
            assert len(masks) == rows and all(m is None for m in masks)
            continue
        assert len(masks) == rows  # one forward per row: both passes in one doubled batch
        levels = torch.nn.functional.pad(scheduling_matrix(schedule, 3, 3), (1, 0))
        for r, mask in enumerate(masks):
            cond, uncond = mask.chunk(2)
            active = levels[r, : mask.shape[1]] != levels[r + 1, : mask.shape[1]]
            assert cond.all() and torch.equal(uncond, ~active.expand_as(uncond))  # only the newest frames


def test_batched_guidance_equals_two_passes() -> None:
    """One forward over [conditional; unconditional] rows gives what two forwards gave."""
    torch.manual_seed(0)
    model = tiny_nanowm()
    diffusion = make("v_cosine_ztsnr")
    context, _, actions = inputs(horizon=3)
    cfg = SamplerConfig(steps=2, guidance_scale=2.5, schedule="pyramid")
    with torch.no_grad():
        batched, _ = generate(model, diffusion, context, None, actions, cfg, 4, torch.Generator().manual_seed(0))

    def two_passes(x, t, acts, proprio=None, action_mask=None, past=None):
        if action_mask is None:
            return model(x, t, acts, proprio, None, past)
        half = x.shape[0] // 2
        halves = [model(x[s], t[s], acts[s], None, action_mask[s], None if past is None else past.map(lambda z: z[s]))
                  for s in (slice(0, half), slice(half, None))]
        return torch.cat([h[0] for h in halves]), None

    two_passes.cache_context, two_passes.supports_context_cache = model.cache_context, True
    with torch.no_grad():
        separate, _ = generate(two_passes, diffusion, context, None, actions, cfg, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(batched, separate, atol=1e-5, rtol=1e-5)


def test_generate_is_reproducible_and_differentiable() -> None:
    diffusion = make("v_cosine_ztsnr")
    model = RandomDenoiser()
    context, context_proprio, actions = inputs(horizon=4)
    cfg = sampler(diffusion, steps=3, schedule="pyramid", eta=0.5, guidance_scale=1.5)

    def run(seed: int, acts: torch.Tensor = actions):
        return generate(model, diffusion, context, context_proprio, acts, cfg, 3, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        first, second, other = run(0), run(0), run(1)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.allclose(first[0], other[0])
    assert first[0].grad_fn is None
    acts = actions.clone().requires_grad_(True)
    latents, proprio = run(0, acts)
    (latents.sum() + proprio.sum()).backward()
    assert torch.isfinite(acts.grad).all() and acts.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = run(0)
    assert low[0].dtype == torch.float32 and torch.isfinite(low[0]).all()
    torch.testing.assert_close(low[0], first[0], atol=0.1, rtol=0.1)


def test_generate_refuses_bad_input() -> None:
    context, _, actions = inputs()
    v, flow = make("v_cosine_ztsnr"), make("flow")
    model = RandomDenoiser()
    g = torch.Generator()
    with pytest.raises(ValueError, match="sampler='ddim' contradicts.*'flow' samples with 'euler'"):
        generate(model, flow, context, None, actions, SamplerConfig(sampler="ddim"), 4, g)
    with pytest.raises(ValueError, match="sampler='euler' contradicts.*'v' samples with 'ddim'"):
        generate(model, v, context, None, actions, SamplerConfig(sampler="euler"), 4, g)
    with pytest.raises(ValueError, match="context_noise_level=0.1 contradicts.*context_noise_level=0.02"):
        generate(model, v, context, None, actions, SamplerConfig(context_noise_level=0.1), 4, g)
    with pytest.raises(ValueError, match="window"):
        generate(model, v, context, None, actions, SamplerConfig(), 1, g)
    with pytest.raises(ValueError, match="steps"):
        generate(model, v, context, None, actions, SamplerConfig(steps=1001), 4, g)
    with pytest.raises(ValueError, match="eta"):
        generate(model, flow, context, None, actions, SamplerConfig(eta=0.5), 4, g)
    with pytest.raises(ValueError, match="schedule"):
        SamplerConfig(schedule="zigzag")


def test_sampler_config_files_are_exactly_the_dataclass() -> None:
    # Every field but the context noise level, which only the model knows (its training level).
    fields = {f.name for f in dataclasses.fields(SamplerConfig)} - {"context_noise_level"}
    files = sorted((CONFIG_DIR / "sampler").glob("*.yaml"))
    assert files
    for path in files:
        values = yaml.safe_load(path.read_text())
        assert set(values) == fields, path.name
        SamplerConfig(**values)


def test_generate_with_nanowm() -> None:
    nanowm = pytest.importorskip("wmplan.models.nanowm")
    cfg = nanowm.nanowm_config("tiny", patch_size=1, latent_channels=C, latent_size=HW, action_dim=AW, proprio_dim=P)
    model = nanowm.NanoWM(cfg).eval()
    diffusion = make("v_cosine_ztsnr")
    context, context_proprio, actions = inputs(horizon=4)
    latents, proprio = generate(model, diffusion, context, context_proprio, actions,
                                sampler(diffusion, steps=2, schedule="pyramid", guidance_scale=2.0), window=3,
                                generator=torch.Generator().manual_seed(0))
    assert latents.shape == (3, 4, C, HW, HW) and proprio.shape == (3, 4, P)
    assert torch.isfinite(latents).all() and torch.isfinite(proprio).all()


@pytest.mark.parametrize("schedule", ["sequential", "pyramid", "full_sequence"])
@pytest.mark.parametrize("n_ctx,window,horizon", [(1, 4, 3), (1, 3, 5), (2, 3, 3)])
def test_context_cache_matches_full_windows(schedule: str, n_ctx: int, window: int, horizon: int) -> None:
    """Running the context once (K/V cache) gives the full-window result up to rounding."""
    torch.manual_seed(0)
    model, diffusion = tiny_nanowm(P), make("v_cosine_ztsnr")
    context, context_proprio, actions = inputs(n_ctx=n_ctx, horizon=horizon)
    outs = {}
    for cache in (True, False):
        cfg = sampler(diffusion, steps=2, schedule=schedule, eta=0.5, guidance_scale=1.5, context_cache=cache)
        with torch.no_grad():
            outs[cache] = generate(model, diffusion, context, context_proprio, actions, cfg, window,
                                   torch.Generator().manual_seed(0))
    for cached, full in zip(outs[True], outs[False]):
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_candidates_share_their_contexts_randomness() -> None:
    """S candidates per context draw the context's noise once: each equals its rollout alone."""
    torch.manual_seed(0)
    model, diffusion = tiny_nanowm(P), make("v_cosine_ztsnr")
    S = 4
    context, context_proprio, _ = inputs(b=2, horizon=5)
    actions = torch.randn(2 * S, 5, AW, generator=torch.Generator().manual_seed(1))
    cfg = sampler(diffusion, steps=2, schedule="pyramid", eta=0.5)
    with torch.no_grad():
        together = generate(model, diffusion, context, context_proprio, actions, cfg, 3,
                            [torch.Generator().manual_seed(s) for s in (10, 11)], candidates=S)
        for i in range(2 * S):
            b = i // S
            alone = generate(model, diffusion, context[b : b + 1], context_proprio[b : b + 1], actions[i : i + 1], cfg,
                             3, [torch.Generator().manual_seed(10 + b)])
            torch.testing.assert_close(together[0][i : i + 1], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(together[1][i : i + 1], alone[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="candidates"):
        generate(model, diffusion, context, context_proprio, actions[:-1], cfg, 3, torch.Generator(), candidates=S)


def test_non_causal_model_samples_without_the_cache() -> None:
    """A bidirectional NanoWM cannot cache its context: sampling runs full windows instead."""
    from wmplan.models.nanowm import NanoWM, nanowm_config

    cfg = nanowm_config("tiny", patch_size=1, latent_channels=C, latent_size=HW, action_dim=AW, causal=False)
    model = NanoWM(cfg).eval()
    assert not model.supports_context_cache
    context, _, actions = inputs(horizon=3)
    diffusion = make("v_cosine_ztsnr")
    with torch.no_grad():
        cached, _ = generate(model, diffusion, context, None, actions, sampler(diffusion, steps=2), 4,
                             torch.Generator().manual_seed(0))
        full, _ = generate(model, diffusion, context, None, actions,
                           sampler(diffusion, steps=2, context_cache=False), 4, torch.Generator().manual_seed(0))
    assert torch.equal(cached, full)
    with pytest.raises(ValueError, match="causal"):
        model.cache_context(context, torch.zeros(3, 1), torch.zeros(3, 1, AW))
