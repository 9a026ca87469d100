"""MT-Diffusion's forward aggregation against closed forms: Theorem 2's marginal, eq. 5's posterior (both forms)
against Bayes' rule, and sampling on a Gaussian toy with the exact predictor."""

import pytest
import torch

from decoders.diffusion import DDIM, Ancestral, DPMSolverPP, VPSchedule
from decoders.diffusion.aggregation import AggregatedForward, ConstantWeight, NoiseRatioWeight, PaperWeight, TabulatedWeight

T = 200


def forward(weights=None):
    weights = weights or {"a": PaperWeight(scale=0.01), "b": ConstantWeight(0.05)}
    return AggregatedForward(VPSchedule(), T, weights).double()


def encodings(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(batch, 4, generator=g, dtype=torch.float64), "b": torch.randn(batch, 4, generator=g, dtype=torch.float64)}


def times(i, batch=3):
    return torch.full((batch,), i / T, dtype=torch.float64)


@pytest.mark.parametrize("weights", [None, {"a": TabulatedWeight([0.02 * (i % 7) for i in range(T)])}], ids=["paper+constant", "tabulated"])
def test_marginal_equals_the_step_by_step_chain(weights):
    """Theorem 2: pushing the exact Gaussian moments of z_0 = x through eq. 3 step by step gives eq. 4 at every t."""
    fwd, enc = forward(weights), encodings()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    marginal = fwd.given(enc)
    mean, var = x.clone(), torch.zeros(3, 1, dtype=torch.float64)
    for i in range(1, T + 1):
        mean = fwd.step_mean(mean, times(i), enc)  # E[z_t] = sqrt(a_t)(E[z_{t-1}] + sum w E)
        var = fwd.a[i] * var + (1 - fwd.a[i])  # Var[z_t] = a_t Var[z_{t-1}] + (1 - a_t)
        if i in (1, 17, 100, T):
            torch.testing.assert_close(mean, marginal.mean(x, times(i)))
            _, sigma = marginal.alpha_sigma(times(i))
            torch.testing.assert_close(var.expand(3, 1)[:, 0], sigma**2)
    assert (marginal.mean(x, times(T)) - fwd.alpha_bar[T].sqrt() * x).abs().max() > 0.1  # the offset is really there


def test_marginal_matches_a_monte_carlo_chain():
    fwd, enc = forward(), {k: v[:1] for k, v in encodings().items()}
    n, g = 20_000, torch.Generator().manual_seed(2)
    z = torch.full((n, 4), 0.3, dtype=torch.float64)
    big = {k: v.expand(n, -1) for k, v in enc.items()}
    for i in range(1, T + 1):
        z = fwd.step_mean(z, times(i, n), big) + (1 - fwd.a[i]).sqrt() * torch.randn(n, 4, generator=g, dtype=torch.float64)
    expected = fwd.given(enc).mean(torch.full((1, 4), 0.3, dtype=torch.float64), times(T, 1))[0]
    torch.testing.assert_close(z.mean(0), expected, atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), torch.full((4,), 1 - fwd.alpha_bar[T].item(), dtype=torch.float64), atol=0.03, rtol=0)


@pytest.mark.parametrize("i", [2, 50, 150, T])
def test_both_forms_of_the_posterior_equal_bayes_rule(i):
    """q(z_{t-1} | z_t, z_0, X) by Gaussian conditioning: prior q(z_{t-1} | z_0, X) = N(mu_p, v_p) (eq. 4) and the
    transition q(z_t | z_{t-1}, X) = N(sqrt(a)(z_{t-1} + sum w E), 1 - a) (eq. 3)."""
    fwd, enc = forward(), encodings()
    g = torch.Generator().manual_seed(3)
    z0, z_t = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    marginal = fwd.given(enc)
    a, ab_prev = fwd.a[i], fwd.alpha_bar[i - 1]
    mu_p, v_p = marginal.mean(z0, times(i - 1)), 1 - ab_prev
    shift = sum(fwd.w[k, i] * enc[name] for k, name in enumerate(fwd.names))
    precision = 1 / v_p + a / (1 - a)
    bayes_mean = (mu_p / v_p + a.sqrt() * (z_t - a.sqrt() * shift) / (1 - a)) / precision
    mean, var = fwd.posterior(z_t, z0, times(i), enc)
    torch.testing.assert_close(mean, bayes_mean)
    torch.testing.assert_close(var[:, 0].expand(3), torch.full((3,), 1 / precision.item(), dtype=torch.float64))
    eps = marginal.noise_of(z_t, z0, times(i))  # the noise for which eq. 4 gives z_t from z_0
    torch.testing.assert_close(fwd.posterior_from_eps(z_t, eps, times(i), enc), bayes_mean)


def test_the_paper_weight_has_a_finite_end_point():
    w = PaperWeight().table(1000)
    assert torch.isfinite(w).all() and w[0] == 0 and w[1] == pytest.approx(1 / 999)
    assert w[1000] == w[999] == 999.0 and torch.all(w[1:] >= w[:-1])
    fwd = AggregatedForward(VPSchedule(), 1000, {"a": PaperWeight()})
    assert torch.isfinite(fwd.atilde).all()
    with pytest.raises(ValueError, match="TabulatedWeight has 3 weights, the process 1000 steps"):
        AggregatedForward(VPSchedule(), 1000, {"a": TabulatedWeight([1, 2, 3])})
    with pytest.raises(ValueError, match="finite weights"):
        AggregatedForward(VPSchedule(), 2, {"a": TabulatedWeight([1.0, float("inf")])})


@pytest.mark.parametrize("steps, sampler, rtol", [(1000, Ancestral(1000), 0.05), (200, DDIM(50), 0.12), (200, DPMSolverPP(15, grid="logsnr"), 0.12)],
                         ids=["algorithm1", "ddim50", "dpmpp_2m_15"])
def test_samplers_reproduce_the_data_moments_on_the_aggregated_marginal(steps, sampler, rtol):
    """Gaussian data x ~ N(m, v) with a known E: the exact eps predictor on the aggregated marginal (denoise y = z - c_t)
    and the library's samplers (Algorithm 1's ancestral step over all T steps, DDIM-50 and DPM-Solver++(2M)-15 on y,
    which is a variance-preserving chain) give back the data's
    mean and variance (DDIM's 50 ODE steps shrink the variance by about 9 %, exactly as they do without aggregation);
    and the samples equal, draw for draw, those of the same chain without aggregation (the offset is handled exactly)."""
    mean, var = torch.tensor([1.5, -0.5], dtype=torch.float64), torch.tensor([0.3, 1.2], dtype=torch.float64)
    n = 20_000
    e = torch.tensor([[2.0, -1.0]], dtype=torch.float64).expand(n, 2)

    def run(weight):
        marginal = AggregatedForward(VPSchedule(), steps, {"a": weight}).double().given({"a": e})

        def denoise(z_t, t):
            alpha, sigma = (v[:, None] for v in marginal.alpha_sigma(t.double()))
            y = marginal.remove_offset(z_t.double(), t.double())
            return mean + alpha * var / (alpha**2 * var + sigma**2) * (y - alpha * mean)

        return sampler(denoise, marginal, (n, 2), timesteps=steps, generator=torch.Generator().manual_seed(0), dtype=torch.float64), marginal

    x, marginal = run(PaperWeight(scale=0.02))
    torch.testing.assert_close(x.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(x.var(0), var, rtol=rtol, atol=0)
    torch.testing.assert_close(x, run(ConstantWeight(0.0))[0], rtol=1e-9, atol=1e-9)
    start = marginal.initial((n, 2), torch.tensor(1.0, dtype=torch.float64), None, torch.Generator().manual_seed(1), "cpu")
    torch.testing.assert_close(start.mean(0), marginal.process.atilde[0, steps] * e[0], atol=0.03, rtol=0)  # the prior is centred on c_T


@pytest.mark.parametrize("kappa, power", [(0.5, 0.0), (2.0, 0.0), (1.0, 1.0)])
def test_the_noise_ratio_weight_sets_the_offset_to_noise_ratio(kappa, power):
    """NoiseRatioWeight: w_t = atilde_t / sqrt(a_t) - atilde_{t-1} with atilde_t = kappa sigma_t^(1 + power) makes eq. 4's
    recursion give exactly that atilde_t (the offset-to-noise ratio is kappa sigma_t^power), every weight non-negative;
    the paper's w_t at scale 0.001 leaves the ratio below 0.1 until late in the chain."""
    fwd = AggregatedForward(VPSchedule(), 1000, {"a": NoiseRatioWeight(kappa, power), "p": PaperWeight(0.001)})
    sigma = (1 - fwd.alpha_bar).sqrt()
    torch.testing.assert_close(fwd.atilde[0], kappa * sigma ** (1 + power), rtol=1e-9, atol=1e-12)
    assert (fwd.w[0] >= 0).all() and fwd.w[0, 0] == 0
    paper_ratio = fwd.atilde[1, 1:] / sigma[1:]
    assert paper_ratio[299] < 0.1 and paper_ratio[999] > 1  # t = 300: 0.06; t = T: above 1
    with pytest.raises(ValueError, match="kappa >= 0 and power >= 0"):
        NoiseRatioWeight(-1.0)
    with pytest.raises(ValueError, match="needs the process's abar_t"):
        NoiseRatioWeight().table(10)
