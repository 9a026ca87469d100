import math

import pytest
import torch

from decoders import ConvImageDecoder, MLPDecoder, Observed, log_prob


def test_laplace_and_gaussian_closed_forms():
    x = torch.tensor([[0.2, 0.9]])
    mean = torch.tensor([[0.5, 0.5]])
    expected_laplace = -(0.3 + 0.4) / 0.75 - 2 * math.log(1.5)
    assert log_prob("laplace", x, mean, 0.75).item() == pytest.approx(expected_laplace, rel=1e-6)
    expected_gauss = sum(-0.5 * (d / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi) for d in (0.3, 0.4))
    assert log_prob("gaussian", x, mean, 0.5).item() == pytest.approx(expected_gauss, rel=1e-6)


def test_bernoulli_and_categorical_closed_forms():
    x = torch.tensor([[1.0, 0.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 0.5, 0.75
    assert log_prob("bernoulli", x, logits).item() == pytest.approx(math.log(0.5) + math.log(0.25), rel=1e-6)
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    assert log_prob("categorical", torch.tensor([1]), logits).item() == pytest.approx(math.log(0.6), rel=1e-6)


def test_log_prob_is_per_example():
    x = torch.rand(4, 3, 8, 8)
    out = log_prob("laplace", x, x.flip(0), 1.0)
    assert out.shape == (4,)
    assert log_prob("laplace", x, x, 1.0).max() > out.max()  # the true mean scores best


@pytest.mark.parametrize("likelihood", ["laplace", "gaussian", "bernoulli"])
@pytest.mark.parametrize("size,channels", [(28, (8, 8)), (32, (8, 8, 8)), (64, (8, 8, 8, 8))])
def test_image_decoder_shapes(likelihood, size, channels):
    dec = ConvImageDecoder(6, image_size=size, channels=channels, hidden_dim=16, likelihood=likelihood)
    z = torch.randn(2, 6)
    img = dec.sample(z)
    assert img.shape == (2, 3, size, size) and img.min() >= 0 and img.max() <= 1
    x = torch.rand(2, 3, size, size)
    terms = dec.bind("img").loss(z, Observed({"img": x}, torch.ones(2, 1, dtype=torch.bool), ("img",)))
    assert set(terms) == {"img/nll"} and terms["img/nll"].shape == (2,) and torch.isfinite(terms["img/nll"]).all()
    out = dec.logits(z) if likelihood == "bernoulli" else dec.mean(z)
    torch.testing.assert_close(terms["img/nll"], -log_prob(likelihood, x, out, dec.scale))


def test_decoder_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        ConvImageDecoder(4, likelihood="poisson")
    with pytest.raises(ValueError, match="not divisible"):
        ConvImageDecoder(4, image_size=30, channels=(8, 8))


def test_label_decoder_samples_follow_its_distribution():
    dec = MLPDecoder(2, 3, hidden=())
    with torch.no_grad():
        dec.net[0].weight.zero_()
        dec.net[0].bias.copy_(torch.log(torch.tensor([0.7, 0.2, 0.1])))
    draws = dec.sample(torch.zeros(20000, 2), generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=3) / 20000.0
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)
