"""Diffusion machinery against closed forms: schedules, parameterisations, the DDPM loss and the DDIM sampler."""

import math

import pytest
import torch

from decoders.diffusion import (
    PREDICTIONS, CosineSchedule, DDPMLoss, LinearLogSNR, VPSchedule, ddim_sample, make_denoiser, target, time_grid, to_eps, to_x0,
)
from decoders.diffusion.parameterization import check_prediction

SCHEDULES = [VPSchedule(), CosineSchedule(), LinearLogSNR()]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_schedule_monotone_and_variance_preserving(schedule):
    t = torch.linspace(1e-3, 1.0, 500, dtype=torch.float64)
    log_snr = schedule.log_snr(t)
    assert torch.all(log_snr[1:] < log_snr[:-1])
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))


def test_schedule_end_points():
    cos = CosineSchedule(-12.0, 9.0)
    torch.testing.assert_close(cos.log_snr(torch.tensor([0.0, 1.0], dtype=torch.float64)), torch.tensor([9.0, -12.0], dtype=torch.float64))
    lin = LinearLogSNR(-13.3, 5.0)
    torch.testing.assert_close(lin.log_snr(torch.tensor([0.0, 1.0])), torch.tensor([13.3, -5.0]))
    vp = VPSchedule(0.1, 20.0)
    assert vp.log_snr(torch.tensor([0.0])).item() == math.inf
    alpha1, _ = vp.alpha_sigma(torch.tensor([1.0], dtype=torch.float64))
    assert alpha1.item() ** 2 == pytest.approx(math.exp(-(0.1 + 0.5 * 19.9)), rel=1e-9)


def test_vp_schedule_is_ddpm_linear_schedule_in_the_limit():
    """alpha_bar_i = prod (1 - beta_j), betas linear 1e-4..0.02 over T = 1000 (Ho et al.), matches exp(-B(i/T))."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    i = torch.tensor([10, 100, 500, 900])
    alpha, _ = VPSchedule().alpha_sigma(i.double() / 1000)
    torch.testing.assert_close(alpha**2, alpha_bar[i - 1], rtol=0.05, atol=1e-6)


@pytest.mark.parametrize("bad", [lambda: VPSchedule(20.0, 0.1), lambda: CosineSchedule(5.0, -5.0), lambda: LinearLogSNR(5.0, -13.0)])
def test_bad_schedule_parameters_raise(bad):
    with pytest.raises(ValueError, match="needs"):
        bad()


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_target_and_x0_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    alpha, sigma = CosineSchedule().alpha_sigma(torch.rand(5, generator=g))
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    torch.testing.assert_close(to_x0(prediction, target(prediction, x0, eps, alpha, sigma), x_t, alpha, sigma), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(to_eps(prediction, target(prediction, x0, eps, alpha, sigma), x_t, alpha, sigma), eps, rtol=1e-4, atol=1e-4)


def test_unknown_prediction_fails_with_one_line():
    with pytest.raises(ValueError, match="unknown prediction type 'score'; choose one of eps, v, x0"):
        check_prediction("score")
    with pytest.raises(ValueError, match="unknown prediction"):
        DDPMLoss(VPSchedule(), prediction="epsilon")


def gaussian_denoiser(schedule, mean, var):
    """The exact E[x0 | x_t] for data x0 ~ N(mean, var) (per coordinate)."""

    def denoise(x_t, t):
        alpha, sigma = (v[:, None] for v in schedule.alpha_sigma(t.double()))
        gain = alpha * var / (alpha**2 * var + sigma**2)
        return (mean + gain * (x_t.double() - alpha * mean)).float()

    return denoise


@pytest.mark.parametrize("schedule", [VPSchedule(), CosineSchedule()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_exact_denoiser_reproduces_gaussian_moments(schedule, eta):
    """eta = 1 with T steps is DDPM's ancestral sampler; eta = 0 integrates the probability-flow ODE. Both are
    exact in the limit of many steps; with fewer steps the variance shrinks, less so as steps grow."""
    mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.25, 4.0, 1.0], dtype=torch.float64)
    denoise = gaussian_denoiser(schedule, mean, var)

    def moments(steps):
        x = ddim_sample(denoise, (20_000, 3), schedule=schedule, steps=steps, eta=eta, generator=torch.Generator().manual_seed(0))
        return x.double().mean(0), x.double().var(0)

    m, v = moments(1000)
    torch.testing.assert_close(m, mean, atol=0.05, rtol=0)
    torch.testing.assert_close(v, var, rtol=0.04, atol=0)
    errors = [((moments(steps)[1] - var).abs() / var).max().item() for steps in (20, 100)]
    assert errors[1] < errors[0] < 0.5


def test_ddim_same_seed_same_samples_and_steps_checked():
    schedule = CosineSchedule()
    denoise = gaussian_denoiser(schedule, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    a, b, c = (ddim_sample(denoise, (7, 2), schedule=schedule, steps=10, eta=1.0, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        time_grid(0, 1000, "cpu")
    grid = time_grid(50, 1000, "cpu")
    assert grid[0] == 1 and grid[-1] == 0 and torch.all(grid[1:] < grid[:-1])
    assert torch.equal(grid * 1000, torch.round(grid * 1000))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddpm_loss_is_zero_for_the_exact_target_and_per_example(prediction):
    """A 'network' that knows x0 and eps (smuggled via cond) has zero loss; the loss is one value per example."""
    schedule = CosineSchedule()
    x0 = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0))

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t, cond):
            alpha, sigma = schedule.alpha_sigma(t)
            eps = (x_t - alpha[:, None, None] * cond) / sigma[:, None, None]
            return target(prediction, cond, eps, alpha, sigma)

    loss = DDPMLoss(schedule, prediction=prediction)(Oracle(), x0, x0, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (6,)
    assert loss.max().item() < 1e-6
    zero = DDPMLoss(schedule, prediction=prediction)(lambda x_t, t, c: torch.zeros_like(x_t), x0, generator=torch.Generator().manual_seed(1))
    assert torch.all(zero > 0)


def test_ddpm_loss_times_lie_on_the_training_grid():
    loss = DDPMLoss(VPSchedule(), timesteps=10)
    t = loss.sample_t(1000, torch.Generator().manual_seed(0), torch.zeros(1))
    assert set((t * 10).round().int().tolist()) == set(range(1, 11))
    assert torch.all(DDPMLoss(VPSchedule(), timesteps=None).sample_t(100, None, torch.zeros(1)) > 0)


def test_denoiser_clip_bounds_x0():
    schedule = CosineSchedule()
    net = lambda x_t, t, c: torch.full_like(x_t, 100.0)  # noqa: E731
    denoise = make_denoiser(net, schedule, "x0", clip=(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])))
    out = denoise(torch.zeros(3, 2), torch.full((3,), 0.5))
    assert torch.equal(out, torch.tensor([[1.0, 2.0]] * 3))


def test_learned_schedule_is_monotone_with_its_end_points():
    from decoders.diffusion import LearnedLogSNR

    torch.manual_seed(0)
    sched = LearnedLogSNR(-10.0, 6.0, hidden=32)
    t = torch.linspace(0, 1, 200)
    log_snr = sched.log_snr(t)
    assert torch.all(log_snr[1:] < log_snr[:-1])
    torch.testing.assert_close(log_snr[[0, -1]], torch.tensor([10.0, -6.0]))
    log_snr.sum().backward()
    assert sched.w2.grad is not None and sched.gamma_0.grad is not None


def test_euler_maruyama_with_exact_score_reproduces_gaussian_moments():
    from decoders.diffusion import euler_maruyama_sample

    schedule = VPSchedule()
    mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.25, 4.0, 1.0], dtype=torch.float64)
    x = euler_maruyama_sample(gaussian_denoiser(schedule, mean, var), (20_000, 3), schedule=schedule, steps=1000,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.double().mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(x.double().var(0), var, rtol=0.04, atol=0)


def test_langevin_corrector_keeps_moments_close():
    """Predictor-corrector: unadjusted Langevin at snr 0.16 inflates the variance a little (ULA bias), no more."""
    from decoders.diffusion import euler_maruyama_sample

    schedule = VPSchedule()
    mean, var = torch.linspace(-1, 1, 48, dtype=torch.float64), torch.full((48,), 0.5, dtype=torch.float64)
    x = euler_maruyama_sample(gaussian_denoiser(schedule, mean, var), (4000, 48), schedule=schedule, steps=500,
                              corrector_steps=1, generator=torch.Generator().manual_seed(0))
    assert (x.double().mean(0) - mean).abs().max() < 0.06
    ratio = x.double().var(0) / var
    assert 0.95 < ratio.min() and ratio.max() < 1.2


def test_vdm_ancestral_sampler_reproduces_gaussian_moments():
    from decoders.diffusion import ancestral_sample

    schedule = LinearLogSNR()
    mean, var = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.09, 0.25], dtype=torch.float64)
    x = ancestral_sample(gaussian_denoiser(schedule, mean, var), (20_000, 2), schedule=schedule, steps=1000,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.double().mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(x.double().var(0), var, rtol=0.05, atol=0)


def test_discrete_vdm_loss_approaches_the_continuous_one():
    """Exact expectations over t for a fixed (x, eps) and a fixed imperfect net: L_T -> L_inf as T grows."""
    from decoders.diffusion import VDMLoss

    schedule = LinearLogSNR()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.rand(1, 6, generator=g) * 2 - 1, torch.randn(1, 6, generator=g)
    net = lambda x_t, t, c: 0.7 * x_t  # noqa: E731

    def expected(timesteps, points):
        loss = VDMLoss(schedule, timesteps=timesteps)
        t = (torch.arange(points, dtype=torch.float32) + (1.0 if timesteps else 0.5)) / points
        return loss.diffusion_term(net, x.expand(points, -1), eps.expand(points, -1), t).mean().item()

    continuous = expected(None, 20_000)
    gaps = [abs(expected(T, T) - continuous) / continuous for T in (10, 100, 1000)]
    assert gaps[0] > 5 * gaps[1] > 25 * gaps[2] and gaps[2] < 0.01, gaps  # O(1/T)


def test_vdm_prior_term_closed_form_and_loss_shape():
    from decoders.diffusion import VDMLoss

    schedule = LinearLogSNR(-13.3, 5.0)
    loss = VDMLoss(schedule, timesteps=None)
    sigma2 = torch.sigmoid(torch.tensor(5.0))
    expected = 0.5 * (sigma2 - torch.log(sigma2) - 1) * 12
    torch.testing.assert_close(loss.prior_term(torch.zeros(2, 3, 2, 2)), expected.expand(2))
    out = loss(lambda x_t, t, c: torch.zeros_like(x_t), torch.rand(4, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    assert out.shape == (4,) and torch.all(out > 0)


def test_dsm_loss_weightings_and_errors():
    from decoders.diffusion import DSMLoss

    x = torch.rand(5, 2, 3)
    zero = lambda x_t, t, c: torch.zeros_like(x_t)  # noqa: E731
    for weighting in DSMLoss.WEIGHTINGS:
        out = DSMLoss(VPSchedule(), weighting=weighting)(zero, x, generator=torch.Generator().manual_seed(0))
        assert out.shape == (5,) and torch.all(torch.isfinite(out)) and torch.all(out > 0)
    # the same score model, parameterised by v instead of eps, gives the same loss
    eps_net = lambda x_t, t, c: 0.3 * x_t  # noqa: E731
    alpha_sigma = VPSchedule().alpha_sigma
    def v_net(x_t, t, c):
        a, s = (u[:, None, None] for u in alpha_sigma(t))
        return (0.3 * x_t - s * x_t) / a  # eps_hat = s x_t + a v
    torch.testing.assert_close(DSMLoss(VPSchedule(), prediction="v")(v_net, x, generator=torch.Generator().manual_seed(1)),
                               DSMLoss(VPSchedule())(eps_net, x, generator=torch.Generator().manual_seed(1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        DSMLoss(VPSchedule(), prediction="score")
    with pytest.raises(ValueError, match="unknown DSM weighting 'snr'"):
        DSMLoss(VPSchedule(), weighting="snr")
    with pytest.raises(ValueError, match="needs a VP schedule"):
        DSMLoss(CosineSchedule(), weighting="likelihood")


def test_truncated_ddim_from_the_mean_has_the_closed_form_spread():
    """Starting the probability-flow ODE at t0 from x_init = mean noised gives x_t0 ~ N(alpha mean, sigma^2)
    instead of the true marginal N(alpha mean, alpha^2 var + sigma^2); the ODE of Gaussian data is linear and
    keeps the standardised coordinate, so x0 ~ N(mean, var sigma^2 / (alpha^2 var + sigma^2))."""
    schedule = VPSchedule()
    mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    var = torch.tensor([0.25, 4.0, 1.0], dtype=torch.float64)
    start = 0.3
    x = ddim_sample(gaussian_denoiser(schedule, mean, var), (20_000, 3), schedule=schedule, steps=1000, start=start, x_init=mean,
                    generator=torch.Generator().manual_seed(0))
    alpha, sigma = (v.double() for v in schedule.alpha_sigma(torch.tensor([start], dtype=torch.float64)))
    expected = var * sigma**2 / (alpha**2 * var + sigma**2)
    assert expected.max() < 0.9 * var.max()  # truncation visibly narrows the spread, so the check can fail
    torch.testing.assert_close(x.double().mean(0), mean, atol=0.03, rtol=0)
    torch.testing.assert_close(x.double().var(0), expected, rtol=0.04, atol=0)
    grid = time_grid(50, 1000, "cpu", start=0.2)
    assert grid[0] == 0.2 and grid[-1] == 0 and len(grid) == 11
    with pytest.raises(ValueError, match=r"start must be in \(0, 1\], got 0.0"):
        time_grid(50, 1000, "cpu", start=0.0)


def test_truncated_euler_maruyama_stays_centred_and_narrower():
    from decoders.diffusion import euler_maruyama_sample

    schedule = VPSchedule()
    mean, var = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([4.0, 1.0], dtype=torch.float64)
    x = euler_maruyama_sample(gaussian_denoiser(schedule, mean, var), (20_000, 2), schedule=schedule, steps=1000, start=0.3, x_init=mean,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.double().mean(0), mean, atol=0.03, rtol=0)
    assert torch.all(x.double().var(0) < 0.9 * var)
