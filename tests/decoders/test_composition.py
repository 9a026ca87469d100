"""Unite-and-Conquer composition (Nair et al. 2023 eq. 8 / 10 / 18): the batched composed prediction equals the formula on
separate calls (several sources, several models, different prediction types), one source with weight w is
classifier-free guidance, the rule holds for the whole image under residual conditioning, the inputs are validated,
and on a Gaussian toy with exact predictors composing two sources moves the samples to the product of experts."""

import pytest
import torch

from decoders import DiffusionDecoder, Observed, SamplingSettings
from decoders.composition import Expert, composed_denoiser, sample_composed
from decoders.diffusion import DDIM, Ancestral, DDPMProcess, EulerMaruyama, ScoreSDEProcess
from decoders.diffusion.parameterization import expand, to_eps, to_x0
from decoders.guidance import cat_conditions, null_condition
from decoders.unet import Condition, UNet2d


def random_unet(seed=0):
    torch.manual_seed(seed)
    net = UNet2d(3, latent_dim=4, cond_channels=3, channels=(8, 8), emb_dim=16)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the output layer starts at zero
    torch.nn.init.normal_(net.null_z, std=1.0)
    return net.eval()


def condition(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Condition(z=torch.randn(n, 4, generator=g), image=torch.rand(n, 3, 8, 8, generator=g), drop=torch.zeros(n, dtype=torch.bool))


def noisy(n=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.rand(n, generator=g) * 0.9 + 0.05


class Counting:
    """A backbone that records its batch sizes."""

    def __init__(self, net):
        self.net, self.calls = net, []

    def __call__(self, x, t, cond):
        self.calls.append(x.shape[0])
        return self.net(x, t, cond)


def test_composed_prediction_is_eq8_from_separate_calls_across_models_and_prediction_types():
    """Two models (an eps and a v backbone on one schedule), the first with two sources, the second with one, with
    reliabilities 0.3 / 0.7: the composed clean estimate is eq. 18 applied to noise predictions computed one call at a
    time, and each model runs one batched call per step."""
    eps_proc, v_proc = DDPMProcess(prediction="eps"), DDPMProcess(prediction="v")
    net_a, net_b = Counting(random_unet(0)), Counting(random_unet(1))
    ca1, ca2, cb = condition(seed=1), condition(seed=2), condition(seed=3)
    betas_a, beta_b, (a_a, a_b) = [1.5, 0.75], 2.0, (0.3, 0.7)
    experts = [Expert(net_a, eps_proc, [ca1, ca2], betas_a, a_a), Expert(net_b, v_proc, [cb], [beta_b], a_b)]
    x_t, t = noisy()
    alpha, sigma = eps_proc.alpha_sigma(t)
    with torch.no_grad():
        composed = composed_denoiser(experts)(x_t, t)
        assert net_a.calls == [3 * 3] and net_b.calls == [2 * 3]  # sources + null, batched, once per model

        def eps(net, proc, cond):
            return to_eps(proc.prediction, net.net(x_t, t, cond), x_t, alpha, sigma)

        null = a_a * eps(net_a, eps_proc, null_condition(ca1)) + a_b * eps(net_b, v_proc, null_condition(cb))
        sources = [(betas_a[0], eps(net_a, eps_proc, ca1)), (betas_a[1], eps(net_a, eps_proc, ca2)), (beta_b, eps(net_b, v_proc, cb))]
        eq18 = null + sum(b * (e - null) for b, e in sources)
        expected = to_x0("eps", eq18, x_t, alpha, sigma)
    torch.testing.assert_close(composed, expected, rtol=1e-4, atol=1e-4)
    # The nulls and sources really differ, so the check above can fail.
    assert not torch.allclose(sources[0][1], null, atol=1e-3) and not torch.allclose(sources[2][1], sources[0][1], atol=1e-3)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_one_source_with_weight_w_is_classifier_free_guidance(w):
    proc, net = DDPMProcess(prediction="v"), Counting(random_unet())
    c = condition()
    x_t, t = noisy()
    alpha, sigma = proc.alpha_sigma(t)
    with torch.no_grad():
        out = composed_denoiser([Expert(net, proc, [c], [w])])(x_t, t)
        cond_x0 = to_x0("v", net.net(x_t, t, c), x_t, alpha, sigma)
        null_x0 = to_x0("v", net.net(x_t, t, null_condition(c)), x_t, alpha, sigma)
    torch.testing.assert_close(out, null_x0 + w * (cond_x0 - null_x0), rtol=1e-4, atol=1e-4)
    # Weight 1 needs no null prediction: one call on the conditional batch only.
    assert net.calls[0] == (3 if w == 1.0 else 6)


def residual_decoder(**kw):
    torch.manual_seed(0)
    dec = DiffusionDecoder(4, DDPMProcess(prediction="v", sampler=DDIM(4)), image_size=8, unet_channels=(8, 8), emb_dim=16,
                           mean_channels=(8,), mean_hidden=8, conditioning="residual", cond_dropout=0.2, **kw).bind("img")
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    torch.nn.init.normal_(dec.net.null_z, std=1.0)
    return dec.eval()


def test_residual_sources_compose_on_the_whole_image():
    """Each source has its own mean image; the UNet models x - mean. The composition must combine the predictions of
    x itself (residual output re-expressed, plus the source's mean), and the null has no shift."""
    dec = residual_decoder()
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    x_t, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([0.3, 0.7])
    alpha, sigma = dec.process.alpha_sigma(t)
    with torch.no_grad():
        expert = dec.expert(["img"], [z1, z2], [1.5, 1.0])
        composed = composed_denoiser([expert])(x_t, t)
        by_hand = []
        for z in (z1, z2):
            mean = 2 * dec.mean_heads["img"].mean(z) - 1
            residual_t = x_t - expand(alpha, x_t) * mean  # the noisy residual the UNet sees
            out = dec.net(residual_t, t, Condition(z=z, image=mean))
            by_hand.append(to_x0("v", out, residual_t, alpha, sigma) + mean)  # its clean estimate of x itself
        null = to_x0("v", dec.net(x_t, t, Condition(z=z1, image=torch.zeros_like(x_t), drop=torch.ones(2, dtype=torch.bool))), x_t, alpha, sigma)
    expected = null + 1.5 * (by_hand[0] - null) + 1.0 * (by_hand[1] - null)
    torch.testing.assert_close(composed, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(by_hand[0], by_hand[1], atol=1e-3)


def test_decoder_guidance_is_the_one_source_composition_and_samples():
    dec = residual_decoder()
    z = torch.randn(2, 4)
    given = Observed({}, torch.zeros(2, 1, dtype=torch.bool), ("img",))

    def sample(**settings):
        return dec.generate(z, given, targets=["img"], sampling=SamplingSettings(**settings), generator=torch.Generator().manual_seed(0))["img"]

    with torch.no_grad():
        plain, strong, again = sample(), sample(guidance=3.0), sample(guidance=3.0)
        composed = dec.generate_composed([z, z], [1.5, 1.5], targets=["img"], generator=torch.Generator().manual_seed(0))["img"]
    assert strong.shape == plain.shape == composed.shape == (2, 3, 8, 8) and 0 <= strong.min() and strong.max() <= 1
    assert torch.equal(strong, again) and not torch.allclose(strong, plain)
    # Two sources with the same z and weights 1.5 + 1.5 are guidance with scale 3.
    torch.testing.assert_close(composed, strong, atol=1e-5, rtol=1e-5)


def test_validation():
    proc, net, c = DDPMProcess(), random_unet(), condition()
    with pytest.raises(ValueError, match="one weight per source"):
        Expert(net, proc, [c, c], [1.0])
    with pytest.raises(ValueError, match="reliability must be in"):
        Expert(net, proc, [c], [1.0], reliability=1.5)
    with pytest.raises(ValueError, match=r"reliabilities must sum to 1, got \[0.5, 0.2\]"):
        composed_denoiser([Expert(net, proc, [c], [1.0], 0.5), Expert(net, proc, [c], [1.0], 0.2)])
    no_dropout = Expert(net, proc, [c, c], [1.0, 1.0], can_drop=False, name="pair")
    with pytest.raises(ValueError, match="pair: its decoder was trained without condition dropout"):
        composed_denoiser([no_dropout])
    composed_denoiser([Expert(net, proc, [c, c], [0.5, 0.5], can_drop=False)])  # weights summing to 1 need no null
    with pytest.raises(ValueError, match="noise schedule differs"):
        composed_denoiser([Expert(net, proc, [c], [1.0], 0.5), Expert(net, ScoreSDEProcess(beta_max=10.0), [c], [1.0], 0.5, name="sde")])
    with pytest.raises(ValueError, match="sde: trained on None timesteps, model on 1000"):
        composed_denoiser([Expert(net, proc, [c], [1.0], 0.5), Expert(net, ScoreSDEProcess(), [c], [1.0], 0.5, name="sde")])
    with pytest.raises(ValueError, match="samples exactly"):
        sample_composed([Expert(net, proc, [c], [1.0])], (3, 3, 8, 8), sampling=SamplingSettings(start=0.5))
    with pytest.raises(ValueError, match="cannot batch conditions"):
        cat_conditions([c, Condition(z=c.z)])


# ---------------------------------------------------------------------------------------------------- Gaussian toy
PRIOR_VAR = 0.25


class ExactGaussian:
    """The exact noise prediction of a 1-d Gaussian ``N(m, v)`` under the forward process: ``x_t ~ N(alpha m, alpha^2 v
    + sigma^2)`` and ``E[eps | x_t] = sigma (x_t - alpha m) / (alpha^2 v + sigma^2)``. The condition's ``z`` holds
    ``(m, v)``; a dropped example is the prior ``N(0, PRIOR_VAR)``."""

    def __init__(self, process):
        self.process = process

    def __call__(self, x_t, t, cond):
        alpha, sigma = (expand(c, x_t) for c in self.process.alpha_sigma(t))
        m, v = cond.z[:, :1].to(x_t), cond.z[:, 1:].to(x_t)
        if cond.drop is not None:
            d = cond.drop[:, None]
            m, v = torch.where(d, torch.zeros_like(m), m), torch.where(d, torch.full_like(v, PRIOR_VAR), v)
        return sigma * (x_t - alpha * m) / (alpha**2 * v + sigma**2)


def gaussian_source(n, m, v):
    return Condition(z=torch.tensor([[m, v]], dtype=torch.float64).expand(n, 2).clone(), drop=torch.zeros(n, dtype=torch.bool))


def posterior(y, r):
    """``p(x | y)`` for ``x ~ N(0, PRIOR_VAR)`` and ``y = x + N(0, r)``."""
    precision = 1 / PRIOR_VAR + 1 / r
    return y / r / precision, 1 / precision


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [Ancestral(1000), DDIM(200), EulerMaruyama(500)], ids=lambda s: s.name)
def test_gaussian_toy_two_sources_move_to_the_product_of_experts(sampler):
    """Two observations y1 = 0.4 (noise 0.05) and y2 = -0.1 (noise 0.1) of x ~ N(0, 0.25): the product of the
    conditionals over the prior, N(0.206, 0.0294), is the posterior given both. Composing the exact conditional and
    unconditional predictors with weights 1 (eq. 10) moves the samples there from either source alone (means 0.333 and
    -0.071). Tolerances: the mean within 0.01 (the sampling error of 20000 draws is ~0.001; the rest is the bias
    below). The variance is not exact: the sum of the *noised* conditionals' scores is the noised posterior's score
    only at t = 0, and at intermediate noise the composed density is sharper, so every sampler lands at most at the
    PoE variance and the deterministic DDIM well below it; we check it falls below both single sources' variances (the
    product sharpens) and above a quarter of the PoE's (measured: ancestral 0.72x, Euler-Maruyama 0.76x, DDIM 0.33x)."""
    process, n = DDPMProcess(timesteps=1000, prediction="eps"), 20000
    net = ExactGaussian(process)
    (m1, v1), (m2, v2) = posterior(0.4, 0.05), posterior(-0.1, 0.1)
    precision = 1 / PRIOR_VAR + 1 / 0.05 + 1 / 0.1
    poe_mean, poe_var = (0.4 / 0.05 - 0.1 / 0.1) / precision, 1 / precision

    def draw(sources, weights):
        expert = Expert(net, process, [gaussian_source(n, m, v) for m, v in sources], weights)
        return sample_composed([expert], (n, 1), sampling=SamplingSettings(sampler=sampler), generator=torch.Generator().manual_seed(0),
                               clip=None, dtype=torch.float64)

    single = draw([(m1, v1)], [1.0])
    both = draw([(m1, v1), (m2, v2)], [1.0, 1.0])
    assert abs(single.mean() - m1) < 0.01 and abs(both.mean() - poe_mean) < 0.01
    assert abs(both.mean() - m1) > 0.1  # moved away from source 1 alone ...
    assert both.var() < min(v1, v2) and 0.25 * poe_var < both.var() < 1.05 * poe_var
    # Two models with the same prior, reliabilities 0.5 / 0.5, one source each: the same composition.
    experts = [Expert(net, process, [gaussian_source(n, m1, v1)], [1.0], 0.5), Expert(net, process, [gaussian_source(n, m2, v2)], [1.0], 0.5)]
    united = sample_composed(experts, (n, 1), sampling=SamplingSettings(sampler=sampler), generator=torch.Generator().manual_seed(0),
                             clip=None, dtype=torch.float64)
    torch.testing.assert_close(united, both, rtol=1e-6, atol=1e-6)


def test_gaussian_toy_composed_score_is_exact_at_low_noise():
    """Where the noise vanishes, the composed prediction is the exact prediction of the product of experts."""
    process = DDPMProcess(timesteps=1000, prediction="eps")
    net = ExactGaussian(process)
    (m1, v1), (m2, v2) = posterior(0.4, 0.05), posterior(-0.1, 0.1)
    precision = 1 / PRIOR_VAR + 1 / 0.05 + 1 / 0.1
    x_t, t = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None], torch.full((9,), 2e-3, dtype=torch.float64)
    expert = Expert(net, process, [gaussian_source(9, m1, v1), gaussian_source(9, m2, v2)], [1.0, 1.0])
    composed = composed_denoiser([expert])(x_t, t)
    exact = to_x0("eps", net(x_t, t, gaussian_source(9, (0.4 / 0.05 - 0.1 / 0.1) / precision, 1 / precision)), x_t, *process.alpha_sigma(t))
    # measured: the rule errs by under 3e-5 here; a wrong one (e.g. the null prediction counted twice) by 2-3e-3
    torch.testing.assert_close(composed, exact, rtol=0, atol=1e-4)
