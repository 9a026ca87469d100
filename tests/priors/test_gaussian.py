import math

import torch

from priors import StandardNormalPrior, kl_standard_normal


def test_kl_closed_form_and_zero_at_prior():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    expected = 0.5 * (1.0 + 1 - 1 - 0) + 0.5 * (0 + 2 - 1 - math.log(2.0))
    assert kl_standard_normal(mu, logvar).item() == pytest_approx(expected)
    assert kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).abs().max() == 0


def test_kl_matches_monte_carlo():
    mu, logvar = torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 0.3])
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.testing.assert_close(kl_standard_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum())


def test_prior_sampling_seeded():
    prior = StandardNormalPrior(3)
    a = prior.sample(5, generator=torch.Generator().manual_seed(0))
    b = prior.sample(5, generator=torch.Generator().manual_seed(0))
    c = prior.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 3) and torch.equal(a, b) and not torch.equal(a, c)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, rel=1e-6)
