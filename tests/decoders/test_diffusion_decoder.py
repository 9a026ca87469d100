"""Diffusion decoders on the decoder contract: every process x conditioning trains and samples; one decoder for
several modalities; predictions in image coordinates; sampling settings as values; errors at build time."""

import pytest
import torch

from decoders import DiffusionDecoder, Observed, SamplingSettings
from decoders.diffusion import (
    DDIM,
    Ancestral,
    CosineSchedule,
    DDPMProcess,
    DPMSolverPP,
    EulerMaruyama,
    LearnedLogSNR,
    ScoreSDEProcess,
    VDMProcess,
)
from decoders.diffusion.parameterization import to_x0
from decoders.unet import Condition, UNet2d

PROCESSES = {
    "ddpm": lambda: DDPMProcess(sampler=DDIM(3)),
    "ddpm_v": lambda: DDPMProcess(prediction="v", sampler=Ancestral(3)),
    "score_sde": lambda: ScoreSDEProcess(sampler=EulerMaruyama(3, corrector_steps=1)),
    "vdm": lambda: VDMProcess(sampler=Ancestral(3)),
    "vdm_learned": lambda: VDMProcess(LearnedLogSNR(hidden=8), timesteps=100, sampler=DDIM(3)),
}


def tiny(process=None, conditioning="residual", modalities=(), key="img", **kw):
    torch.manual_seed(0)
    dec = DiffusionDecoder(4, process if process is not None else DDPMProcess(sampler=DDIM(3)), image_size=8, unet_channels=(8, 8),
                           emb_dim=16, mean_channels=(8,), mean_hidden=8, conditioning=conditioning, modalities=modalities, **kw)
    return dec.bind(key)


def observed(x: dict, names=("img",), n=3) -> Observed:
    n = next(iter(x.values())).shape[0] if x else n
    return Observed(x, torch.tensor([m in x for m in names]).expand(n, -1), tuple(names))


def open_up(dec):
    """The UNet's output layer starts at zero; give it weights so predictions depend on the input."""
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    torch.nn.init.normal_(dec.net.null_z, std=1.0)
    return dec


@pytest.mark.parametrize("conditioning", ["film", "mean_channels", "residual"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_loss_terms_and_generate(name, conditioning):
    dec = tiny(PROCESSES[name](), conditioning, cond_dropout=0.2)
    x, z = torch.rand(3, 3, 8, 8), torch.randn(3, 4, requires_grad=True)
    terms = dec.loss(z, observed({"img": x}), generator=torch.Generator().manual_seed(0))
    expected = {"img/diffusion"} | ({"img/mean_nll"} if conditioning != "film" else set())
    expected |= {"img/diffusion_recon", "img/diffusion_prior"} if name.startswith("vdm") else set()
    assert set(terms) == expected
    assert all(v.shape == (3,) and torch.isfinite(v).all() for v in terms.values())
    sum(v.sum() for v in terms.values()).backward()
    assert all(p.grad is not None for p in dec.net.parameters())  # null_z too: condition dropout uses it
    if conditioning != "film":
        assert all(p.grad is not None for p in dec.mean_heads["img"].parameters())
    with torch.no_grad():
        a = dec.generate(z.detach(), observed({}), targets=["img"], generator=torch.Generator().manual_seed(1))["img"]
        b = dec.generate(z.detach(), observed({}), targets=["img"], generator=torch.Generator().manual_seed(1))["img"]
        c = dec.generate(z.detach(), observed({}), targets=["img"], generator=torch.Generator().manual_seed(2))["img"]
    assert a.shape == (3, 3, 8, 8) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_skipping_the_diffusion_terms_runs_no_unet():
    dec = tiny()
    calls = []
    dec.net.register_forward_hook(lambda *a: calls.append(1))
    x, z = torch.rand(3, 3, 8, 8), torch.randn(3, 4)
    terms = dec.loss(z, observed({"img": x}), skip=frozenset({"diffusion"}))
    assert set(terms) == {"img/mean_nll"} and not calls
    torch.testing.assert_close(terms["img/mean_nll"], dec.mean_heads["img"].nll(z, x))
    assert set(tiny(VDMProcess()).loss(z, observed({"img": x}), skip=frozenset({"diffusion"}))) == {"img/mean_nll"}


def test_one_decoder_serves_several_modalities_with_one_unet_call():
    dec = tiny(modalities=("a", "b"), key="images")
    assert dec.modalities == ("a", "b") and set(dec.mean_heads) == {"a", "b"}
    calls = []
    dec.net.register_forward_hook(lambda module, inputs, out: calls.append(inputs[0].shape[0]))
    x = {"a": torch.rand(5, 3, 8, 8), "b": torch.rand(5, 3, 8, 8)}
    terms = dec.loss(torch.randn(5, 4), observed(x, ("a", "b")), generator=torch.Generator().manual_seed(0))
    assert set(terms) == {"a/mean_nll", "a/diffusion", "b/mean_nll", "b/diffusion"} and calls == [10]
    out = dec.generate(torch.randn(5, 4), observed({}, ("a", "b"), n=5), targets=["b"], generator=torch.Generator().manual_seed(0))
    assert set(out) == {"b"} and out["b"].shape == (5, 3, 8, 8)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_residual_predictions_are_for_the_whole_image(prediction):
    """Under residual conditioning the UNet models r = x - mean; the decoder's backbone re-expresses its output for x:
    the clean estimate of x is the UNet's clean estimate of r plus the mean, at the same noise (x_t = r_t + alpha m)."""
    dec = open_up(tiny(DDPMProcess(prediction=prediction)))
    z, t = torch.randn(2, 4), torch.tensor([0.3, 0.8])
    cond = dec.condition("img", z)
    r_t = torch.randn(2, 3, 8, 8)
    alpha, sigma = dec.process.alpha_sigma(t)
    x_t = r_t + alpha[:, None, None, None] * cond.shift
    with torch.no_grad():
        x0_r = to_x0(prediction, dec.net(r_t, t, cond), r_t, alpha, sigma)
        x0_x = to_x0(prediction, dec.backbone(x_t, t, cond), x_t, alpha, sigma)
    torch.testing.assert_close(x0_x, x0_r + cond.shift, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_gated_residual_scales_the_residual_estimate_by_alpha(prediction):
    """residual_gate: the clean estimate of x is the mean plus alpha_t times the UNet's clean estimate of r (at any
    time, for each prediction type), so it tends to the mean as the noise grows; a dropped example is not gated."""
    dec = open_up(tiny(DDPMProcess(prediction=prediction), residual_gate=True))
    z, t = torch.randn(3, 4), torch.tensor([0.05, 0.5, 1.0])
    drop = torch.tensor([False, False, True])
    cond = dec.condition("img", z, drop)
    r_t = torch.randn(3, 3, 8, 8)
    alpha, sigma = dec.process.alpha_sigma(t)
    shift = cond.shift * (~drop)[:, None, None, None]
    x_t = r_t + alpha[:, None, None, None] * shift
    with torch.no_grad():
        x0_r = to_x0(prediction, dec.net(r_t, t, cond), r_t, alpha, sigma)
        x0_x = to_x0(prediction, dec.backbone(x_t, t, cond), x_t, alpha, sigma)
    gate = torch.where(drop, torch.ones_like(alpha), alpha)[:, None, None, None]
    torch.testing.assert_close(x0_x, shift + gate * x0_r, rtol=1e-4, atol=1e-4)
    assert (x0_x[2] - x0_r[2]).abs().max() < 1e-4  # the null model: no shift, no gate
    assert (x0_x[1] - shift[1]).abs().mean() < 0.9 * (x0_r[1]).abs().mean()  # alpha < 1 pulls it towards the mean


def test_gated_residual_estimate_at_full_noise_is_the_mean_image():
    """At t = 1 the gated decoder's clean estimate of x is its mean image to within alpha_1 (0.006 on DDPM's schedule)
    times the UNet's estimate, whatever the UNet says: there its v loss is the squared error of the mean head, which
    the one diffusion term thus trains as a regression of x on z. Without the gate the UNet's estimate is added whole."""
    x, z = 2 * torch.rand(4, 3, 8, 8) - 1, torch.randn(4, 4)
    t, eps = torch.ones(4), torch.randn(4, 3, 8, 8)
    gaps = {}
    for gate in (True, False):
        dec = open_up(tiny(DDPMProcess(prediction="v"), residual_gate=gate, mean_head_loss=False))
        cond = dec.condition("img", z)
        alpha, sigma = dec.process.alpha_sigma(t)
        x_t = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps
        with torch.no_grad():
            gaps[gate] = (to_x0("v", dec.backbone(x_t, t, cond), x_t, alpha, sigma) - cond.shift).abs().max()
    assert float(alpha[0]) < 0.01
    assert gaps[True] < 0.05 < 0.5 < gaps[False]
    with pytest.raises(ValueError, match="residual_gate gates the residual of 'residual' conditioning"):
        tiny(conditioning="mean_channels", residual_gate=True)


def test_residual_loss_equals_the_loss_of_the_residual():
    """Training in image coordinates through the backbone is the residual model's own loss on x - mean."""
    dec = open_up(tiny(DDPMProcess(prediction="v")))
    x, z = torch.rand(4, 3, 8, 8), torch.randn(4, 4)
    cond = dec.condition("img", z)
    ours = dec.process.loss(dec.backbone, 2 * x - 1, cond, anchor=cond.shift, generator=torch.Generator().manual_seed(5))["diffusion"]
    residual = dec.process.loss(dec.net, 2 * x - 1 - cond.shift, cond, generator=torch.Generator().manual_seed(5))["diffusion"]
    torch.testing.assert_close(ours, residual, rtol=1e-4, atol=1e-3)


def test_condition_dropout_makes_a_dropped_example_unconditional():
    """A dropped example has no z, no mean image and no residual shift: its prediction ignores z entirely."""
    dec = open_up(tiny(cond_dropout=0.5))
    x_t, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    drop = torch.tensor([True, True])
    with torch.no_grad():
        a = dec.backbone(x_t, t, dec.condition("img", torch.randn(2, 4), drop))
        b = dec.backbone(x_t, t, dec.condition("img", torch.randn(2, 4), drop))
        c = dec.backbone(x_t, t, dec.condition("img", torch.randn(2, 4), ~drop))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_unet_null_embedding():
    net = UNet2d(3, latent_dim=4, cond_channels=3, channels=(8, 8), emb_dim=16)
    t, z, image = torch.rand(2), torch.randn(2, 4), torch.rand(2, 3, 8, 8)
    dropped = net.embed(t, Condition(z=z, image=image, drop=torch.tensor([True, True])))
    other = net.embed(t, Condition(z=torch.randn(2, 4), image=image, drop=torch.tensor([True, True])))
    torch.testing.assert_close(dropped, other)  # z is ignored where dropped
    kept = net.embed(t, Condition(z=z, image=image, drop=torch.tensor([False, True])))
    assert not torch.allclose(kept[0], dropped[0]) and torch.allclose(kept[1], dropped[1])
    with pytest.raises(ValueError, match="conditioned on z"):
        net(torch.rand(2, 3, 8, 8), t, None)


def test_unet_on_pixel_patches():
    """patch_size 2: the first level runs at half the resolution (its features are 4 x 4 for an 8 x 8 image), the
    output is back at full resolution with each 2 x 2 patch filled from its own channels; a size the patches do not
    divide is one line; the decoder passes the setting to its UNet and samples full-size images."""
    net = UNet2d(3, latent_dim=4, cond_channels=3, channels=(8, 8), emb_dim=16, patch_size=2)
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    x_t, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    cond = Condition(z=torch.randn(2, 4), image=torch.rand(2, 3, 8, 8))
    out, feats = net(x_t, t, cond, features=True)
    assert out.shape == (2, 3, 8, 8) and feats["out"].shape == (2, 8, 4, 4) and net.stem.in_channels == 24
    # pixel (2i + a, 2j + b) of channel c comes from output channel 4c + 2a + b of the half-resolution conv
    direct = net.out(feats["out"])
    torch.testing.assert_close(out[:, 1, 1::2, 0::2], direct[:, 4 * 1 + 2 * 1 + 0])
    with pytest.raises(ValueError, match="an image of 7x7 pixels does not divide into 2-pixel patches"):
        net(torch.randn(2, 3, 7, 7), t, Condition(z=cond.z, image=torch.rand(2, 3, 7, 7)))
    with pytest.raises(ValueError, match="patch_size must be >= 1, got 0"):
        UNet2d(3, channels=(8,), patch_size=0)
    dec = tiny(patch_size=2)
    assert dec.net.patch_size == 2
    samples = dec.generate(torch.randn(2, 4), observed({}, n=2), targets=["img"], generator=torch.Generator().manual_seed(0))
    assert samples["img"].shape == (2, 3, 8, 8)


def test_bits_per_dim_only_for_vdm():
    x, z = torch.rand(2, 3, 8, 8), torch.randn(2, 4)
    with torch.no_grad():
        bpd = tiny(VDMProcess()).bits_per_dim(z, observed({"img": x}))["img"]
    assert bpd.shape == (2,) and torch.all(bpd > 0) and torch.isfinite(bpd).all()
    assert tiny(DDPMProcess()).bits_per_dim(z, observed({"img": x})) == {}
    assert tiny(VDMProcess()).bound_terms() == {"diffusion", "diffusion_recon", "diffusion_prior"}
    assert tiny(DDPMProcess()).bound_terms() == frozenset()


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DDPMProcess(CosineSchedule(), sampler=EulerMaruyama()), "euler_maruyama needs the VP-SDE .* ForwardProcess has CosineSchedule"),
        (lambda: DDPMProcess(prediction="score"), "unknown prediction type 'score'"),
        (lambda: ScoreSDEProcess(weighting="snr"), "unknown DSM weighting 'snr'"),
        (lambda: VDMProcess(sampler=DDIM(steps=0)), "sampler steps must be >= 1"),
        (lambda: tiny(DDPMProcess(), conditioning="concat"), "unknown conditioning 'concat'"),
        (lambda: SamplingSettings(sampler="heun"), "unknown sampler 'heun'; choose one of ddim, ancestral, dpmpp_2m, euler_maruyama"),
        (lambda: SamplingSettings(start=1.5), r"start must be in \(0, 1\], got 1.5"),
        (lambda: SamplingSettings(guidance=-1.0), "guidance must be >= 0"),
        (lambda: SamplingSettings(grid="karras"), "grid must be time or logsnr, got 'karras'"),
    ],
)
def test_bad_settings_fail_at_build_time(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sampling_settings_resolve_against_each_decoder_default():
    ddim50, em1000 = DDIM(50), EulerMaruyama(1000)
    assert SamplingSettings().sampler_for(em1000) is em1000
    assert SamplingSettings(steps=10).sampler_for(em1000) == EulerMaruyama(10)
    assert SamplingSettings(sampler="ddim").sampler_for(em1000) == DDIM(50)  # the named sampler's own defaults
    assert SamplingSettings(sampler="ddim", steps=7, eta=1.0).sampler_for(em1000) == DDIM(7, eta=1.0)
    assert SamplingSettings(eta=0.5).sampler_for(ddim50) == DDIM(50, eta=0.5)
    with pytest.raises(ValueError, match="eta applies to the ddim sampler, not euler_maruyama"):
        SamplingSettings(eta=0.5).sampler_for(em1000)
    assert SamplingSettings(sampler=Ancestral(9)).sampler_for(ddim50) == Ancestral(9)
    assert SamplingSettings(sampler="dpmpp_2m", steps=15, grid="logsnr").sampler_for(ddim50) == DPMSolverPP(15, grid="logsnr")
    assert SamplingSettings(sampler="dpmpp_2m").sampler_for(ddim50).grid == "time"
    with pytest.raises(ValueError, match="grid applies to the dpmpp_2m sampler, not ddim"):
        SamplingSettings(grid="logsnr").sampler_for(ddim50)
    assert SamplingSettings(grid="logsnr").record()["grid"] == "logsnr"
    assert SamplingSettings(steps=5).replace(steps=None, start=0.5) == SamplingSettings(steps=5, start=0.5)
    record = SamplingSettings(start=0.2).record()
    assert record["exact"] is False and record["start"] == 0.2


def test_decoder_checks_and_describes_sampling():
    dec = tiny(ScoreSDEProcess())
    with pytest.raises(ValueError, match="guidance 2.0 needs a decoder trained with cond_dropout > 0"):
        dec.check_sampling(SamplingSettings(guidance=2.0))
    with pytest.raises(ValueError, match="euler_maruyama needs the VP-SDE"):
        tiny(VDMProcess()).check_sampling(SamplingSettings(sampler="euler_maruyama"))
    with pytest.raises(ValueError, match="a 'film' decoder has none"):
        tiny(conditioning="film").check_sampling(SamplingSettings(start=0.5))
    with pytest.raises(ValueError, match="unconditional 'sampled' applies to MT-Diffusion decoders"):
        dec.check_sampling(SamplingSettings(unconditional="sampled"))
    described = dec.describe_sampling(SamplingSettings(steps=200))
    assert described == {"sampler": "euler_maruyama", "steps": 200, "corrector_steps": 0, "snr": 0.16, "t_min": 1e-3,
                         "guidance": 1.0, "start": 1.0, "exact": True}


def test_sampling_settings_change_generation_not_the_decoder():
    dec = open_up(tiny(DDPMProcess(prediction="v", sampler=DDIM(20))))
    z = torch.randn(3, 4)
    state = {k: v.clone() for k, v in dec.state_dict().items()}
    with torch.no_grad():
        full = dec.generate(z, observed({}), targets=["img"], generator=torch.Generator().manual_seed(0))["img"]
        again = dec.generate(z, observed({}), targets=["img"], sampling=SamplingSettings(start=1.0), generator=torch.Generator().manual_seed(0))["img"]
        near = dec.generate(z, observed({}), targets=["img"], sampling=SamplingSettings(start=0.002), generator=torch.Generator().manual_seed(0))["img"]
        fewer = dec.generate(z, observed({}), targets=["img"], sampling=SamplingSettings(steps=2), generator=torch.Generator().manual_seed(0))["img"]
        mean = dec.mean_heads["img"].mean(z).clamp(0, 1)
    assert torch.equal(full, again) and not torch.equal(full, fewer)
    assert (near - mean).abs().mean() < 0.02 and (full - mean).abs().mean() > 0.1  # start -> 0 returns the mean
    assert all(torch.equal(v, dec.state_dict()[k]) for k, v in state.items())
    assert dec.process.sampler == DDIM(20)  # the process keeps its default: settings are values, not state


@pytest.mark.parametrize("mean_head_loss", [True, False])
def test_one_term_per_modality_without_the_mean_heads_loss(mean_head_loss):
    """mean_head_loss false: the decoder's only term for its modality is the diffusion loss (eq. 17), and the mean
    head still learns, through that term (its mean is not detached); true: the head's likelihood is a second term and
    the diffusion term does not reach the head (detach_mean)."""
    dec = open_up(tiny(mean_head_loss=mean_head_loss))
    x, z = torch.rand(3, 3, 8, 8), torch.randn(3, 4, requires_grad=True)
    terms = dec.loss(z, observed({"img": x}), generator=torch.Generator().manual_seed(0))
    assert set(terms) == ({"img/diffusion", "img/mean_nll"} if mean_head_loss else {"img/diffusion"})
    terms["img/diffusion"].sum().backward()
    head_grads = [p.grad for p in dec.mean_heads["img"].parameters()]
    if mean_head_loss:
        assert all(g is None for g in head_grads)
    else:
        assert all(g is not None for g in head_grads) and any(g.abs().sum() > 0 for g in head_grads)
        assert z.grad is not None and z.grad.abs().sum() > 0  # through the head, the diffusion term reaches z and the encoders


def test_one_target_per_example_is_an_unbiased_estimate_of_the_sum_over_modalities(monkeypatch):
    """target_sampling one: the UNet runs once per example (not once per modality); each example's term is that of
    one of its present modalities times its number of present modalities, zero for the others; every present
    modality is drawn about equally often, an absent one never. The process loss is replaced by a closed form of the
    input (the image's mean), so the bookkeeping is checked exactly."""
    names = ("a", "b", "c")
    dec = tiny(modalities=names, key="images", target_sampling="one", mean_head_loss=False)
    calls = []
    dec.net.register_forward_hook(lambda module, inputs, out: calls.append(inputs[0].shape[0]))

    def closed(x):
        return x.flatten(1).mean(1)

    monkeypatch.setattr(dec.process, "loss", lambda net, x, cond, **kw: {"diffusion": closed(x)}, raising=False)
    n = 600
    x = {m: torch.rand(n, 3, 8, 8) for m in names}
    present = torch.ones(n, 3, dtype=torch.bool)
    present[: n // 2, 2] = False  # the first half lacks c
    terms = dec.loss(torch.randn(n, 4), Observed(x, present, names), generator=torch.Generator().manual_seed(0))
    assert set(terms) == {f"{m}/diffusion" for m in names}
    value = torch.stack([terms[f"{m}/diffusion"] for m in names], dim=1)
    drawn = value != 0
    assert (drawn.sum(dim=1) == 1).all() and not drawn[: n // 2, 2].any()
    expected = torch.stack([closed(2 * x[m] - 1) for m in names], dim=1) * present.sum(dim=1, keepdim=True)
    torch.testing.assert_close(value[drawn], expected[drawn])
    # Uniform over the present ones: 1/2 each in the first half, 1/3 each in the second (binomial sd ~0.03).
    first, second = drawn[: n // 2].float().mean(0), drawn[n // 2:].float().mean(0)
    assert (first[:2] - 0.5).abs().max() < 0.1 and (second - 1 / 3).abs().max() < 0.1
    # With the real loss the UNet sees n images, one per example, where target_sampling all gives it 3 n.
    monkeypatch.undo()
    dec.loss(torch.randn(n, 4), Observed(x, present, names), generator=torch.Generator().manual_seed(0))
    every = tiny(modalities=names, key="images", mean_head_loss=False)
    every.net.register_forward_hook(lambda module, inputs, out: calls.append(inputs[0].shape[0]))
    every.loss(torch.randn(n, 4), Observed(x, present, names), generator=torch.Generator().manual_seed(0))
    assert calls == [n, 3 * n]  # all: every example of every modality in the batch, absent ones masked afterwards


def test_one_target_with_a_single_drawn_modality_leaves_the_others_zero():
    dec = tiny(modalities=("a", "b"), key="images", target_sampling="one", mean_head_loss=False)
    x = {m: torch.rand(2, 3, 8, 8) for m in ("a", "b")}
    present = torch.tensor([[True, False], [True, False]])
    terms = dec.loss(torch.randn(2, 4), Observed(x, present, ("a", "b")), generator=torch.Generator().manual_seed(0))
    assert (terms["b/diffusion"] == 0).all() and (terms["a/diffusion"] > 0).all()
    with pytest.raises(ValueError, match="target_sampling"):
        tiny(target_sampling="some")
