"""Classifier-free guidance and composition: the batched combination equals the formula on separate calls."""

import pytest
import torch

from decoders import DiffusionDecoder, Observed, SamplingSettings
from decoders.diffusion import DDIM, DDPMProcess
from decoders.guidance import cat_conditions, compose, guided, null_condition
from decoders.unet import Condition, UNet2d


def random_unet():
    torch.manual_seed(0)
    net = UNet2d(3, latent_dim=4, cond_channels=3, channels=(8, 8), emb_dim=16)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)  # the output layer starts at zero
    torch.nn.init.normal_(net.null_z, std=1.0)
    return net.eval()


def inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.rand(n, generator=g), Condition(z=torch.randn(n, 4, generator=g), image=torch.rand(n, 3, 8, 8, generator=g))


def test_composition_matches_separate_predictions():
    net = random_unet()
    x, t, c1 = inputs()
    _, _, c2 = inputs(seed=2)
    with torch.no_grad():
        out1, out2, null = net(x, t, c1), net(x, t, c2), net(x, t, null_condition(c1))
        composed = compose(net, [c1, c2], [1.5, -0.25])(x, t, None)
    torch.testing.assert_close(composed, null + 1.5 * (out1 - null) - 0.25 * (out2 - null), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(null, out1, atol=1e-3)  # the null really differs, so the check above can fail


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guidance_scale_end_points(scale):
    net = random_unet()
    x, t, c = inputs()
    with torch.no_grad():
        out, null = net(x, t, c), net(x, t, null_condition(c))
        torch.testing.assert_close(guided(net, c, scale)(x, t, None), null + scale * (out - null), rtol=1e-4, atol=1e-5)


def test_scale_one_makes_a_single_conditional_call():
    calls = []

    def net(x, t, cond):
        calls.append(x.shape[0])
        return x

    x, t, c = inputs()
    guided(net, c, 1.0)(x, t, None)
    guided(net, c, 2.0)(x, t, None)
    assert calls == [3, 6]  # the guided call batches conditional and null predictions


def test_cat_conditions_and_errors():
    _, _, c = inputs()
    both = cat_conditions([c, null_condition(c)])
    assert both.z.shape == (6, 4) and both.drop.tolist() == [False] * 3 + [True] * 3 and both.shift is None
    shifted = cat_conditions([Condition(z=c.z, shift=torch.ones(3, 3, 8, 8))] * 2)
    assert shifted.shift.shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match="only some have 'image'"):
        cat_conditions([c, Condition(z=c.z)])
    with pytest.raises(ValueError, match="one weight per condition"):
        compose(random_unet(), [c], [1.0, 2.0])


def tiny(**kw):
    torch.manual_seed(0)
    return DiffusionDecoder(4, DDPMProcess(prediction="v", sampler=DDIM(4)), image_size=8, unet_channels=(8, 8), emb_dim=16,
                            mean_channels=(8,), mean_hidden=8, **kw).bind("img")


def generate(dec, z, **settings):
    given = Observed({}, torch.zeros(z.shape[0], 1, dtype=torch.bool), ("img",))
    return dec.generate(z, given, targets=["img"], sampling=SamplingSettings(**settings), generator=torch.Generator().manual_seed(0))["img"]


def test_decoder_guidance_is_the_formula_on_whole_image_predictions():
    """Guided sampling with scale w combines the decoder's conditional and null predictions (each for the whole image,
    the null one without the residual shift) as null + w (cond - null)."""
    dec = tiny(cond_dropout=0.1)
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    torch.nn.init.normal_(dec.net.null_z, std=1.0)
    z, x_t, t = torch.randn(2, 4), torch.randn(2, 3, 8, 8), torch.rand(2)
    cond = dec.condition("img", z, torch.zeros(2, dtype=torch.bool))
    with torch.no_grad():
        out, null = dec.backbone(x_t, t, cond), dec.backbone(x_t, t, null_condition(cond))
        torch.testing.assert_close(guided(dec.backbone, cond, 3.0)(x_t, t, None), null + 3.0 * (out - null), rtol=1e-4, atol=1e-5)
        plain, strong, again = generate(dec, z), generate(dec, z, guidance=3.0), generate(dec, z, guidance=3.0)
    assert strong.shape == plain.shape and 0 <= strong.min() and strong.max() <= 1
    assert torch.equal(strong, again) and not torch.allclose(strong, plain)
    with pytest.raises(ValueError, match="needs a decoder trained with cond_dropout > 0"):
        generate(tiny(), z, guidance=2.0)
