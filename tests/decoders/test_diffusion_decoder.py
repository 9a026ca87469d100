"""Diffusion decoders: every process x conditioning trains and samples; condition dropout; errors at build time."""

import pytest
import torch

from decoders import DiffusionDecoder
from decoders.diffusion import DDPMProcess, LearnedLogSNR, ScoreSDEProcess, VDMProcess
from decoders.unet import Condition, UNet2d

PROCESSES = {
    "ddpm": lambda: DDPMProcess(steps=3),
    "ddpm_v": lambda: DDPMProcess(prediction="v", sampler="ancestral", steps=3),
    "score_sde": lambda: ScoreSDEProcess(steps=3, corrector_steps=1),
    "vdm": lambda: VDMProcess(steps=3),
    "vdm_learned": lambda: VDMProcess(LearnedLogSNR(hidden=8), timesteps=100, steps=3),
}


def tiny(process, conditioning="residual", **kw):
    torch.manual_seed(0)
    return DiffusionDecoder(4, process, image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,), mean_hidden=8,
                            conditioning=conditioning, **kw)


@pytest.mark.parametrize("conditioning", ["film", "mean_channels", "residual"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_loss_and_generate(name, conditioning):
    dec = tiny(PROCESSES[name](), conditioning, cond_dropout=0.2)
    x, z = torch.rand(3, 3, 8, 8), torch.randn(3, 4, requires_grad=True)
    loss = dec.loss(x, z)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    assert all(p.grad is not None for p in dec.net.parameters() if p.requires_grad and p is not dec.net.null_z)
    if conditioning != "film":
        assert dec.mean_head is not None and all(p.grad is not None for p in dec.mean_head.parameters())
    with torch.no_grad():
        a = dec.generate(z.detach(), generator=torch.Generator().manual_seed(1))
        b = dec.generate(z.detach(), generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)


def test_stage_one_trains_only_the_mean_head():
    dec = tiny(DDPMProcess())
    dec.diffusion_weight = 0.0
    x, z = torch.rand(3, 3, 8, 8), torch.randn(3, 4)
    torch.testing.assert_close(dec.loss(x, z), dec.mean_head.loss(x, z))
    dec.loss(x, z).sum().backward()
    assert all(p.grad is None for p in dec.net.parameters())


def test_residual_sample_is_mean_plus_residual():
    """With an untrained (zero-output) UNet and eps prediction the residual sampled by DDIM is x0 = clip(x_t/alpha)
    at the first step; with the x0 parameterisation a zero net predicts a zero residual: the sample is the mean."""
    dec = tiny(DDPMProcess(prediction="x0", steps=5))
    z = torch.randn(4, 4)
    with torch.no_grad():
        torch.testing.assert_close(dec.generate(z, generator=torch.Generator().manual_seed(0)), dec.mean_head.mean(z).clamp(0, 1))


def test_condition_dropout_uses_the_null_embedding():
    net = UNet2d(3, latent_dim=4, cond_channels=3, channels=(8, 8), emb_dim=16)
    t, z, image = torch.rand(2), torch.randn(2, 4), torch.rand(2, 3, 8, 8)
    dropped = net.embed(t, Condition(z=z, image=image, drop=torch.tensor([True, True])))
    other = net.embed(t, Condition(z=torch.randn(2, 4), image=image, drop=torch.tensor([True, True])))
    torch.testing.assert_close(dropped, other)  # z is ignored where dropped
    kept = net.embed(t, Condition(z=z, image=image, drop=torch.tensor([False, True])))
    assert not torch.allclose(kept[0], dropped[0]) and torch.allclose(kept[1], dropped[1])
    with pytest.raises(ValueError, match="conditioned on z"):
        net(torch.rand(2, 3, 8, 8), t, None)


def test_bits_per_dim_only_for_vdm():
    x, z = torch.rand(2, 3, 8, 8), torch.randn(2, 4)
    with torch.no_grad():
        bpd = tiny(VDMProcess(steps=2)).bits_per_dim(x, z)
    assert bpd.shape == (2,) and torch.all(bpd > 0) and torch.isfinite(bpd).all()
    with pytest.raises(TypeError, match="no likelihood bound"):
        tiny(DDPMProcess()).bits_per_dim(x, z)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DDPMProcess(sampler="euler_maruyama"), "unknown sampler 'euler_maruyama' for DDPMProcess; choose one of ddim, ancestral"),
        (lambda: DDPMProcess(prediction="score"), "unknown prediction type 'score'"),
        (lambda: ScoreSDEProcess(weighting="snr"), "unknown DSM weighting 'snr'"),
        (lambda: VDMProcess(steps=0), "sampler steps must be >= 1"),
        (lambda: tiny(DDPMProcess(), conditioning="concat"), "unknown conditioning 'concat'"),
    ],
)
def test_bad_settings_fail_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_configure_sampling_overrides_and_checks():
    proc = ScoreSDEProcess(steps=1000)
    proc.configure_sampling(steps=10, sampler="ddim")
    assert (proc.steps, proc.sampler) == (10, "ddim")
    with pytest.raises(ValueError, match="unknown sampler 'ancestral' for ScoreSDEProcess"):
        proc.configure_sampling(sampler="ancestral")


def test_start_refines_the_mean_and_is_checked():
    """start near 0 returns (almost) the mean head's image; start = 1 is the exact sampler; film has no mean."""
    dec = tiny(DDPMProcess(prediction="v", steps=20))
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    z = torch.randn(3, 4)
    with torch.no_grad():
        full = dec.generate(z, generator=torch.Generator().manual_seed(0))
        dec.configure_sampling(start=1.0)
        assert torch.equal(dec.generate(z, generator=torch.Generator().manual_seed(0)), full)
        dec.configure_sampling(start=0.002)
        near = dec.generate(z, generator=torch.Generator().manual_seed(0))
        mean = dec.mean_head.mean(z).clamp(0, 1)
    assert (near - mean).abs().mean() < 0.02 and (full - mean).abs().mean() > 0.1
    with pytest.raises(ValueError, match="a 'film' decoder has none"):
        tiny(DDPMProcess(), conditioning="film", start=0.5)
    with pytest.raises(ValueError, match=r"start must be in \(0, 1\], got 1.5"):
        dec.configure_sampling(start=1.5)
