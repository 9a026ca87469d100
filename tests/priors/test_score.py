"""The latent score prior: 1-D UNet shapes, standardisation and clipping, and a mixture-of-Gaussians toy."""

import copy

import pytest
import torch

from priors import ScorePrior, UNet1d
from priors.training import PriorFitConfig, fit_score_prior


@pytest.mark.parametrize("d", [1, 5, 32, 33])
def test_unet1d_any_latent_size(d):
    net = UNet1d(d, channels=(8, 16, 16), emb_dim=16)
    z = torch.randn(3, d, requires_grad=True)
    out = net(z, torch.rand(3))
    assert out.shape == (3, d) and torch.isfinite(out).all()
    torch.nn.init.normal_(net.out[-1].weight)  # zero-initialised head: open it so gradients reach the input
    net(z, torch.rand(3)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unconditional"):
        net(z, torch.rand(3), torch.zeros(3, 1))


def test_standardisation_and_clip_range_come_from_the_data():
    g = torch.Generator().manual_seed(0)
    z = 3.0 * torch.randn(500, 4, generator=g) + torch.tensor([1.0, -2.0, 0.0, 5.0])
    prior = ScorePrior(4, channels=(8, 8), emb_dim=16, clip_margin=1.0)
    prior.set_statistics(z)
    u = prior.standardize(z)
    torch.testing.assert_close(u.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(u.std(0), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.low, u.amin(0))
    torch.testing.assert_close(prior.high, u.amax(0))
    with torch.no_grad():
        torch.nn.init.normal_(prior.net.out[-1].weight, std=10.0)  # a wild network: the clip must hold
        s = prior.sample(64, generator=torch.Generator().manual_seed(1), steps=5)
    lo, hi = prior.low * prior.std + prior.mean, prior.high * prior.std + prior.mean
    assert torch.all(s >= lo - 1e-4) and torch.all(s <= hi + 1e-4)


def test_prior_rejects_wrong_latent_shape_and_bad_settings():
    prior = ScorePrior(4, channels=(8,), emb_dim=8)
    with pytest.raises(ValueError, match=r"d=4 got latents of shape \[2, 5\]"):
        prior.loss(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="prediction"):
        ScorePrior(4, prediction="score")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        PriorFitConfig(steps=0)
    with pytest.raises(ValueError, match="thread_split must be >= 1"):
        PriorFitConfig(thread_split=0)


def test_a_thread_split_prior_fit_is_deterministic_and_draws_its_own_noise():
    """Same seed, same weights; the split fit is not the unsplit one (its parts draw their own noise), so a split
    setting that never reached the loop would fail the last assertion."""
    start = ScorePrior(4, channels=(8, 8), emb_dim=8)
    torch.nn.init.normal_(start.net.out[-1].weight)

    def fit(split, seed=0):
        prior = copy.deepcopy(start)
        fit_score_prior(prior, draw_mog, PriorFitConfig(steps=3, batch_size=16, statistics_samples=64, thread_split=split), seed=seed, progress=False)
        return torch.cat([p.flatten() for p in prior.parameters()])

    split = fit(2)
    assert torch.equal(split, fit(2)) and not torch.equal(split, fit(2, seed=1)) and not torch.equal(split, fit(1))


def test_same_seed_same_prior_samples():
    prior = ScorePrior(6, channels=(8, 8), emb_dim=8, eta=1.0)
    torch.nn.init.normal_(prior.net.out[-1].weight)
    with torch.no_grad():
        a, b, c = (prior.sample(5, generator=torch.Generator().manual_seed(s), steps=4) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.allclose(a, c)  # a generator that ignored its seed would fail the second


def test_prior_steps_are_passed_with_the_prior_never_written_into_it():
    prior = ScorePrior(6, channels=(8, 8), emb_dim=8, sample_steps=5)
    torch.nn.init.normal_(prior.net.out[-1].weight)
    drawn = prior.with_steps(2)
    with torch.no_grad():
        a = drawn.sample(4, generator=torch.Generator().manual_seed(0))
        b = prior.sample(4, generator=torch.Generator().manual_seed(0), steps=2)
        c = prior.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.allclose(a, c) and prior.sample_steps == 5
    with pytest.raises(ValueError, match="prior steps must be >= 1"):
        prior.with_steps(0)


MEANS = torch.tensor([[-4.0, 0.0, 2.0, 0.0], [4.0, 0.0, 0.0, -2.0], [0.0, 4.0, 0.0, 0.0]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])
STD = 0.5


def draw_mog(n, generator):
    k = torch.multinomial(WEIGHTS, n, replacement=True, generator=generator)
    return MEANS[k] + STD * torch.randn(n, 4, generator=generator)


@pytest.mark.slow
def test_prior_learns_a_mixture_of_gaussians():
    """The aggregate posterior is a known 3-mode mixture in 4-d: samples cover every mode with its weight, and
    match the mixture's mean and covariance. Each batch is split over two threads (as the main job fits its prior;
    the same objective as unsplit, which the deterministic-fit test above runs, in about 0.7x the time)."""
    prior = ScorePrior(4, channels=(32, 64), emb_dim=64)
    config = PriorFitConfig(steps=600, batch_size=256, lr=2e-3, ema_decay=0.99, thread_split=2)
    losses = fit_score_prior(prior, draw_mog, config, progress=False)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        s = prior.sample(4000, generator=torch.Generator().manual_seed(1))
    mode = torch.cdist(s, MEANS).argmin(1)
    torch.testing.assert_close(torch.bincount(mode, minlength=3) / len(s), WEIGHTS, atol=0.04, rtol=0)
    within = (s - MEANS[mode]).std(0)
    torch.testing.assert_close(within, torch.full((4,), STD), atol=0.12, rtol=0)
    ref = draw_mog(200_000, torch.Generator().manual_seed(2))
    torch.testing.assert_close(s.mean(0), ref.mean(0), atol=0.2, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), torch.cov(ref.T), atol=0.6, rtol=0.1)
