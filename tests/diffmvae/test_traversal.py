"""Latent traversals (diffmvae.traversal), what the notebooks compute."""

import math

import pytest
import torch
from conftest import LATENT, image_batch, tiny_image_vae

from decoders import DiffusionDecoder
from decoders.diffusion import DDIM, DDPMProcess
from diffmvae.generation.traversal import (
    decode_frames,
    dimension_sweep,
    frames_figure,
    interpolate,
    kl_per_dimension,
    posterior_loop,
    prior_walk,
)
from diffmvae.model.vae import MultimodalVAE
from encoders import ConvImageEncoder
from priors import ScorePrior


def diffusion_vae() -> MultimodalVAE:
    torch.manual_seed(0)
    enc = {m: ConvImageEncoder(LATENT, image_size=8, channels=(4, 4), hidden_dim=8) for m in ("m0", "m1")}
    dec = {"images": DiffusionDecoder(LATENT, DDPMProcess(sampler=DDIM(3)), image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,),
                                      mean_hidden=8, modalities=("m0", "m1"))}
    return MultimodalVAE(enc, dec, LATENT).eval()


def test_kl_per_dimension_is_the_mean_closed_form():
    torch.manual_seed(0)
    model = tiny_image_vae().eval()
    data = image_batch(batch=10)
    kl = kl_per_dimension(model, data, batch_size=3)  # batches of 3, 3, 3, 1 average to the whole
    mu, logvar = model.posterior(data)
    expected = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0)
    torch.testing.assert_close(kl, expected.detach())
    assert kl.shape == (LATENT,) and (kl >= 0).all()


def test_dimension_sweep_moves_one_dimension_per_row():
    z = torch.arange(4.0)
    frames = dimension_sweep(z, [2, 0], torch.tensor([-1.0, 0.5, 3.0]))
    assert frames.shape == (6, 4)
    assert frames[:3, 2].tolist() == [-1.0, 0.5, 3.0] and frames[3:, 0].tolist() == [-1.0, 0.5, 3.0]
    assert torch.equal(frames[:3, [0, 1, 3]], z[[0, 1, 3]].expand(3, 3)) and torch.equal(frames[3:, 1:], z[1:].expand(3, 3))
    with pytest.raises(ValueError, match="dimension 4 is out of range"):
        dimension_sweep(z, [4], torch.zeros(2))


def test_interpolations_hit_both_ends():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    lin, sl = interpolate(a, b, 5), interpolate(a, b, 5, "slerp")
    for path in (lin, sl):
        torch.testing.assert_close(path[0], a)
        torch.testing.assert_close(path[-1], b)
    torch.testing.assert_close(lin[2], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(sl.norm(dim=1), torch.ones(5))  # on the circle, unlike the linear path
    torch.testing.assert_close(sl[2], torch.tensor([math.sqrt(0.5)] * 2))


def test_posterior_loop_is_a_closed_loop_of_posterior_draws():
    model = tiny_image_vae().eval()
    given = {"m0": image_batch(batch=1)["m0"]}
    g = torch.Generator().manual_seed(3)
    loop = posterior_loop(model, given, 8, g)
    mu, logvar = model.posterior(given)
    u = (loop - mu) / (0.5 * logvar).exp()  # cos(theta) e1 + sin(theta) e2
    e1, e2 = u[0], u[2]  # theta = 0 and pi / 2
    torch.testing.assert_close(u[1], (e1 + e2) * math.sqrt(0.5), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(posterior_loop(model, given, 8, torch.Generator().manual_seed(3)), loop)
    with pytest.raises(ValueError, match="one example"):
        posterior_loop(model, image_batch(batch=2), 4, g)


def test_prior_walk_takes_small_steps_under_the_prior():
    torch.manual_seed(0)
    prior = ScorePrior(LATENT, channels=(8, 8), emb_dim=16, sample_steps=10).eval()
    prior.set_statistics(torch.randn(64, LATENT) * 2 + 1)
    walk = prior_walk(prior, 6, torch.Generator().manual_seed(0), start=0.1)
    assert walk.shape == (6, LATENT) and torch.isfinite(walk).all()
    torch.testing.assert_close(prior_walk(prior, 6, torch.Generator().manual_seed(0), start=0.1), walk)
    independent = prior.sample(6, generator=torch.Generator().manual_seed(1))
    steps = (walk[1:] - walk[:-1]).norm(dim=1).mean()
    assert steps < 0.5 * (independent[1:] - independent[:-1]).norm(dim=1).mean()


def test_decode_frames_uses_the_same_noise_for_every_frame():
    model = diffusion_vae()
    z = torch.randn(1, LATENT).expand(3, -1)
    frames = decode_frames(model, z, seed=5)
    assert set(frames) == {"m0", "m1"} and frames["m0"].shape == (3, 3, 8, 8)
    torch.testing.assert_close(frames["m0"][0], frames["m0"][2])  # same z, same noise: the same image
    batch = model.decode(z, generator=torch.Generator().manual_seed(5))  # one batch: each row its own noise
    assert not torch.allclose(batch["m0"][0], batch["m0"][2])
    other = decode_frames(model, z[:1], seed=6)
    assert not torch.allclose(other["m0"][0], frames["m0"][0])
    fig = frames_figure(frames, rows=1, row_labels=["z"], column_labels=["a", "b", "c"], title="t")
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="do not fill 2 rows"):
        frames_figure(frames, rows=2)
