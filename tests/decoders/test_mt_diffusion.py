"""The MT-Diffusion decoder: each variant trains a few steps and samples with Algorithm 1 from any subset; config errors
are one line. Variants combine the noise network's inputs (-U: z_t and t; -X: also the aggregated image as channels)
with the head's position (-M: the middle block; -E: the end, the output block), plus the backbone route."""

import pytest
import torch

from decoders import Observed, SamplingSettings
from decoders.diffusion import DDIM, EulerMaruyama
from decoders.diffusion.aggregation import ConstantWeight
from decoders.mt_diffusion import Aggregate, Algorithm1, ChainState, Head, MTDiffusionDecoder
from diffmvae.model.joint import JointDiffusion

VARIANTS = {
    "U-E": dict(aggregate={"label": Aggregate("embedding", 10, ConstantWeight(0.02))}, heads={"label": Head("label", "out", 10)}),
    "U-E classifier": dict(aggregate={"label": Aggregate("structured", 10, ConstantWeight(0.02))}, heads={"label": Head("label", "output", 10)}),
    "U-M": dict(aggregate={"label": Aggregate("embedding", 10, ConstantWeight(0.02))}, heads={"label": Head("label", "mid", 10)}),
    "X-E": dict(aggregate={"src": Aggregate("identity", weight=ConstantWeight(0.02))}, inputs=["src"], heads={"src": Head("image", "out")}),
    "U-E image": dict(aggregate={"src": Aggregate("identity", weight=ConstantWeight(0.02))}, heads={"src": Head("image", "out")}),
    "backbone": dict(aggregate={"label": Aggregate("backbone", 10)}, heads={"label": Head("label", "mid", 10)}),
}


def tiny(variant, **kw):
    torch.manual_seed(0)
    return MTDiffusionDecoder("img", image_size=8, unet_channels=(8, 8), emb_dim=16, timesteps=20, sampler=DDIM(4), **VARIANTS[variant], **kw)


def batch(n=4):
    g = torch.Generator().manual_seed(1)
    return {"img": torch.rand(n, 3, 8, 8, generator=g), "src": torch.rand(n, 3, 8, 8, generator=g), "label": torch.randint(0, 10, (n,), generator=g)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_and_generates_from_any_subset(variant):
    model = JointDiffusion(tiny(variant))
    data = {m: v for m, v in batch().items() if m in model.modalities}
    record = model.elbo(data, generator=torch.Generator().manual_seed(0))
    other = next(m for m in model.modalities if m != "img")
    assert set(record.terms) == {"img/diffusion", f"{other}/head"}
    assert all(v.shape == (4,) and torch.isfinite(v).all() for v in record.terms.values())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model.elbo(data, generator=torch.Generator().manual_seed(0)).loss(term_weights=model.default_term_weights()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is not None for name, p in model.named_parameters() if "null_z" not in name)
    with torch.no_grad():
        joint = model.generate(None, 4, generator=torch.Generator().manual_seed(2))
        cond = model.generate({other: data[other]}, generator=torch.Generator().manual_seed(2))
        again = model.generate({other: data[other]}, generator=torch.Generator().manual_seed(2))
        another = model.generate({other: data[other]}, generator=torch.Generator().manual_seed(3))
        read = model.generate({"img": data["img"]}, generator=torch.Generator().manual_seed(2))
    assert joint["img"].shape == (4, 3, 8, 8) and 0 <= joint["img"].min() and joint["img"].max() <= 1
    assert torch.equal(cond["img"], again["img"]) and not torch.allclose(cond["img"], another["img"]) and cond[other] is data[other]
    assert read[other].shape == data[other].shape


def test_algorithm1_steps_return_a_new_marginal_and_change_nothing_in_place():
    """The sampler carries Algorithm 1's state: a step reads the marginal it is given and returns the next one; the
    given one (its encodings, values and estimates) is left as it was, so a step can be repeated exactly."""
    dec = tiny("U-E").eval()
    values = {"label": torch.nn.functional.one_hot(torch.tensor([1, 2, 3]), 10).float()}
    cond, enc = dec.condition(None, values, 3, torch.device("cpu"))
    start = dec.forward_process.given(ChainState(enc, values, {}, cond))
    before = {k: v.clone() for k, v in enc.items()}
    step = Algorithm1(dec, None, frozenset())
    z_t, t = torch.randn(3, 3, 8, 8), torch.full((3,), 0.5)
    with torch.no_grad():
        x0, following = step.step(z_t, t, start)
        again, _ = step.step(z_t, t, start)
    assert following is not start and set(following.cond.estimates) == {"label"}
    assert all(torch.equal(enc[k], before[k]) for k in enc) and start.cond.estimates == {}
    assert torch.equal(x0, again) and not torch.equal(following.cond.current["label"], values["label"])  # re-estimated
    with torch.no_grad():  # a modality held fixed keeps its value
        _, held = Algorithm1(dec, None, frozenset({"label"})).step(z_t, t, start)
    assert torch.equal(held.cond.current["label"], values["label"])


@pytest.mark.parametrize("estimates", ["hard", "soft"])
def test_algorithm1_re_estimates_labels_hard_by_default(estimates):
    """Hard re-estimation continues on a one-hot label (what training shows the encoder); soft on the head's class
    probabilities, a mixture of class patterns."""
    dec = tiny("U-E", **({} if estimates == "hard" else {"label_estimates": "soft"})).eval()
    torch.nn.init.normal_(dec.head_nets["label"].net[-1].weight, std=1.0)
    values = {"label": torch.full((3, 10), 0.1)}
    cond, enc = dec.condition(None, values, 3, torch.device("cpu"))
    start = dec.forward_process.given(ChainState(enc, values, {}, cond))
    with torch.no_grad():
        _, following = Algorithm1(dec, None, frozenset()).step(torch.randn(3, 3, 8, 8), torch.full((3,), 0.5), start)
    label = following.cond.current["label"]
    one_hot = bool(((label == 0) | (label == 1)).all() and torch.equal(label.sum(-1), torch.ones(3)))
    assert one_hot == (estimates == "hard") and torch.allclose(label.sum(-1), torch.ones(3))


def test_head_weight_is_eq6_lambda_per_dimension():
    """Against the eps loss summed over the D = 3*8*8 main dimensions: a label head's cross-entropy weighs lambda * D
    (lambda against the per-dimension eps loss), an image head's loss, summed over its D pixels, lambda per pixel."""
    dec = tiny("U-E", head_weight=0.1)
    assert dec.term_weights() == {"label/head": pytest.approx(0.1 * 3 * 8 * 8)}
    assert JointDiffusion(dec).modalities == ("img", "label")
    image = tiny("U-E image", head_weight=0.1)
    assert image.term_weights() == {"src/head": pytest.approx(0.1)}
    # the weighted image-head term is lambda times the per-pixel head loss times D: lambda against the per-dimension eps loss
    record = JointDiffusion(image).elbo({m: v for m, v in batch().items() if m in ("img", "src")}, generator=torch.Generator().manual_seed(0))
    head = record.terms["src/head"]
    per_pixel = head / (3 * 8 * 8)
    weighted = record.loss(term_weights=JointDiffusion(image).default_term_weights())
    eps_per_dim = record.terms["img/diffusion"] / (3 * 8 * 8)
    torch.testing.assert_close(weighted, 3 * 8 * 8 * (eps_per_dim + 0.1 * per_pixel), rtol=1e-5, atol=1e-4)


def test_head_times_signal_weights_each_head_term_by_its_times_image_share():
    """``head_times: signal``: the head's term at the training time ``t`` is eq. 6's (the same draws) times
    ``abar_t / mean_i abar_i``; the diffusion term is untouched."""
    uniform, signal = tiny("U-E image"), tiny("U-E image", head_times="signal")
    signal.load_state_dict(uniform.state_dict())
    times, network = [], signal.network
    signal.network = lambda z_t, t, c: times.append(t) or network(z_t, t, c)
    data = {m: v for m, v in batch(8).items() if m in ("img", "src")}
    a, b = (JointDiffusion(d).elbo(data, generator=torch.Generator().manual_seed(0)).terms for d in (uniform, signal))
    abar = signal.forward_process.alpha_bar
    expected = abar[torch.round(times[0].double() * 20).long()] / abar[1:].mean()
    assert 0.05 < float(expected.min()) < 1.0 < float(expected.max())  # early and late times drawn: weights that differ
    torch.testing.assert_close(b["src/head"], a["src/head"] * expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["img/diffusion"], a["img/diffusion"])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_max_weight_caps_the_diffusion_term_per_example_and_leaves_the_heads_alone(prediction):
    """``max_weight`` scales the diffusion term at the training time ``t`` by ``min(1, cap / w(t))`` (``w``: ``SNR``
    for eps, ``1 + SNR`` for v), the same draws as without it; the head's term is untouched."""
    plain, capped = tiny("U-E image", prediction=prediction), tiny("U-E image", prediction=prediction, max_weight=2.0)
    capped.load_state_dict(plain.state_dict())
    times, network = [], capped.network
    capped.network = lambda z_t, t, c: times.append(t) or network(z_t, t, c)
    data = {m: v for m, v in batch(16).items() if m in ("img", "src")}
    a, b = (JointDiffusion(d).elbo(data, generator=torch.Generator().manual_seed(0)).terms for d in (plain, capped))
    alpha, sigma = capped.forward_process.schedule.alpha_sigma(times[0])
    snr = alpha**2 / sigma**2
    scale = torch.clamp(2.0 / (snr if prediction == "eps" else 1 + snr), max=1.0)
    assert bool((scale < 0.5).any()) and bool((scale == 1.0).any())  # both sides of the cap drawn
    torch.testing.assert_close(b["img/diffusion"], a["img/diffusion"] * scale, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["src/head"], a["src/head"])


@pytest.mark.parametrize("read_time", [None, 0.25])
def test_heads_read_a_given_image_at_read_time_with_their_modality_hidden(read_time):
    """The read path noises the image to ``read_time`` (default the first level, 1 / T) and hides the label."""
    dec = tiny("U-E classifier", read_time=read_time)
    seen, network, condition = [], dec.network, dec.condition
    dec.network = lambda z_t, t, c: seen.append(t) or network(z_t, t, c)
    dec.condition = lambda z, values, b, device: seen.append(values["label"]) or condition(z, values, b, device)
    x0, label = 2 * batch()["img"] - 1, torch.nn.functional.one_hot(batch()["label"], 10).float()
    with torch.no_grad():
        out = dec.read(None, x0, {"label": label}, torch.Generator().manual_seed(0))
    hidden, t = seen
    assert torch.equal(hidden, torch.zeros_like(label)) and out["label"].shape == (4, 10)
    torch.testing.assert_close(t, torch.full((4,), read_time or 1 / 20))


def test_given_conditions_stay_fixed_and_missing_ones_are_re_estimated():
    """Algorithm 1: a given label enters every step's offset as itself; a missing one follows the head."""
    dec = tiny("U-E")
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    seen = []
    original = dec.condition

    def spy(z, values, b, device):
        seen.append(values["label"].clone())
        return original(z, values, b, device)

    dec.condition = spy
    label = torch.tensor([3, 3, 7, 7])
    given = Observed({"label": label}, torch.tensor([[False, True]] * 4), ("img", "label"))
    with torch.no_grad():
        dec.generate(None, given, targets=["img"], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, torch.nn.functional.one_hot(label, 10).float()) for v in seen)
    seen.clear()
    with torch.no_grad():
        out = dec.generate(None, Observed({}, torch.zeros(4, 2, dtype=torch.bool), ("img", "label")), targets=["img", "label"],
                           generator=torch.Generator().manual_seed(0))
    assert len(seen) > 2 and not torch.equal(seen[0], seen[-1])  # re-estimated from the head at every step
    assert out["label"].shape == (4,) and out["label"].dtype == torch.long


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Head("label", "middle", 10), "unknown head position 'middle'; choose mid, out or output"),
        (lambda: Aggregate("pretrained"), "unknown encoder kind 'pretrained'"),
        (lambda: Head("image", "mid"), "an image head reads the output block"),
        (lambda: Aggregate("embedding"), "needs num_classes"),
        (lambda: MTDiffusionDecoder("img", inputs=["src"]), "inputs names .src., which is not a modality of aggregate"),
        (lambda: MTDiffusionDecoder("img", heads={"img": Head("image")}), "main modality 'img' cannot"),
        (lambda: MTDiffusionDecoder("img", aggregate={"s": Aggregate()}, sampler=EulerMaruyama()), "euler_maruyama needs the VP-SDE"),
        (lambda: MTDiffusionDecoder("img", head_times="clean"), "unknown head_times 'clean'; choose uniform or signal"),
        (lambda: MTDiffusionDecoder("img", read_time=0.0), r"read_time is a fraction of the diffusion's T, in \(0, 1\]; got 0.0"),
    ],
)
def test_bad_configuration_is_one_line(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_sampling_settings_it_cannot_honour_are_refused():
    dec = tiny("U-E")
    with pytest.raises(ValueError, match="no null condition"):
        dec.check_sampling(SamplingSettings(guidance=2.0))
    with pytest.raises(ValueError, match="refines a mean image"):
        dec.check_sampling(SamplingSettings(start=0.5))
    assert dec.describe_sampling(SamplingSettings(steps=7))["steps"] == 7


def test_specs_are_checked():
    from diffmvae.data.spec import ModalitySpec, image_spec

    dec = tiny("U-E")
    dec.check_specs({"img": image_spec(3, 8), "label": ModalitySpec("label", (), 10, "value")})
    with pytest.raises(ValueError, match=r"embedding encoder of 'label' needs a label with 10 classes; the data has label \[\] with 5 classes"):
        dec.check_specs({"img": image_spec(3, 8), "label": ModalitySpec("label", (), 5, "value")})
    with pytest.raises(ValueError, match=r"main modality of 'img' needs an image \[3, 8, 8\]; the data has image \[3, 28, 28\]"):
        dec.check_specs({"img": image_spec(3, 28), "label": ModalitySpec("label", (), 10, "value")})
    head_only = MTDiffusionDecoder("img", image_size=8, unet_channels=(8, 8), emb_dim=16, timesteps=20, heads={"label": Head("label", "mid", 10)})
    with pytest.raises(ValueError, match="label head of 'label' needs a label with 10 classes"):
        head_only.check_specs({"img": image_spec(3, 8), "label": image_spec(3, 8)})
