"""The grouped-convolution benchmark times one layer standing for M experts' layers; that layer must compute what they
compute, or its timing says nothing about batching the experts."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))
from grouped_conv import grouped  # noqa: E402


@pytest.mark.parametrize("kind", [torch.nn.Conv2d, torch.nn.ConvTranspose2d])
def test_grouped_convolution_holds_every_experts_weights(kind):
    """On the experts' inputs stacked along channels it gives their outputs stacked along channels (strides and output
    padding included)."""
    torch.manual_seed(0)
    extra = {"output_padding": 1} if kind is torch.nn.ConvTranspose2d else {}
    layers = [kind(4, 6, 3, stride=2, padding=1, **extra) for _ in range(3)]
    xs = [torch.randn(2, 4, 7, 7) for _ in range(3)]
    with torch.no_grad():
        ours = grouped(layers)(torch.cat(xs, dim=1))
        theirs = torch.cat([layer(x) for layer, x in zip(layers, xs)], dim=1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
