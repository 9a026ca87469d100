"""MT-Diffusion's label encoders, what its heads may see, and its jointly learned pure-generation (null) path: the
structured and option-3 encoders are no noise pattern, a head is never trained on an input that holds its own target,
the null path adds no offset and trains no head, unconditional sampling can go through it, and guidance combines the
conditional and null predictions on the same chain."""

import pytest
import torch
import torch.nn.functional as F

from decoders import Observed, SamplingSettings
from decoders.diffusion import DDIM
from decoders.diffusion.aggregation import ConstantWeight
from decoders.diffusion.parameterization import target, to_x0
from decoders.mt_diffusion import Aggregate, Algorithm1, ChainState, Head, MTDiffusionDecoder
from decoders.unet import Condition
from diffmvae.model.joint import JointDiffusion


def decoder(kind="embedding", **kw):
    torch.manual_seed(0)
    kw.setdefault("aggregate", {"label": Aggregate(kind, 10, ConstantWeight(0.05))})
    kw.setdefault("heads", {"label": Head("label", "mid", 10)})
    return MTDiffusionDecoder("img", image_size=8, unet_channels=(8, 8), emb_dim=16, timesteps=20, sampler=DDIM(4), **kw)


def data(n=64):
    g = torch.Generator().manual_seed(1)
    return {"img": torch.rand(n, 3, 8, 8, generator=g), "src": torch.rand(n, 3, 8, 8, generator=g),
            "label": torch.randint(0, 10, (n,), generator=g)}


def spy_on_labels(dec):
    """The label values of every ``condition`` call of ``dec``, in order (a list the calls append to)."""
    seen, original = [], dec.condition

    def spy(z, values, b, device, direct=None):
        seen.append(values["label"].clone())
        return original(z, values, b, device, direct)

    dec.condition = spy
    return seen


def neighbour_correlation(p):
    """Mean correlation of horizontally adjacent pixels of patterns [K, C, H, W]."""
    a, b = p[..., :-1].flatten(1), p[..., 1:].flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def test_the_structured_encoder_is_smooth_where_the_embedding_is_noise_like():
    """The i.i.d. embedding's class patterns look locally like the diffusion noise (adjacent pixels uncorrelated); the
    structured ones are smooth (strongly correlated), distinct per class, of unit scale."""
    eye = torch.eye(10)
    noise = decoder("embedding").encode("label", eye)
    smooth = decoder("structured").encode("label", eye)
    assert abs(neighbour_correlation(noise)) < 0.15 and neighbour_correlation(smooth) > 0.8
    torch.testing.assert_close(smooth.std(dim=(1, 2, 3)), torch.ones(10), atol=1e-5, rtol=0)
    corr = torch.corrcoef(smooth.flatten(1))
    assert (corr - torch.eye(10)).abs().max() < 0.95


def test_option_3_encodes_a_label_by_the_unet_at_a_zero_image_and_t_zero_under_stop_gradient():
    """E(y) = U-Net(0, y, t = 0) (Chen et al. App. E.3), times the encoder's scale, with no gradient into the UNet; the
    denoising passes read the label through the same embedding."""
    dec = decoder("unet", aggregate={"label": Aggregate("unet", 10, ConstantWeight(0.05), scale=2.0)})
    for name, p in dec.net.named_parameters():  # the zero-initialised residual branches and output: a trained UNet's
        if name.endswith(("conv2.weight", "out.2.weight")):
            torch.nn.init.normal_(p, std=0.3)
    y = torch.tensor([3, 7])
    enc = dec.encode("label", F.one_hot(y, 10).float())
    with torch.no_grad():
        direct = dec.net(torch.zeros(2, 3, 8, 8), torch.zeros(2), Condition(vector=F.one_hot(y, 10).float()))
    torch.testing.assert_close(enc, 2.0 * direct, rtol=1e-3, atol=1e-4)  # batches of 10 and 2: kernels may round apart
    assert not enc.requires_grad and not torch.allclose(enc[0], enc[1])
    cond, _ = dec.condition(None, {"label": F.one_hot(y, 10).float()}, 2, torch.device("cpu"))
    assert torch.equal(cond.vector, F.one_hot(y, 10).float())


@pytest.mark.parametrize("variant", ["structured label, offset only", "unet label", "backbone label", "structured label input",
                                     "image input"])
def test_a_head_is_never_trained_on_an_input_that_holds_its_own_target(variant):
    """Where a head predicts an aggregated modality, its term is computed only on examples from which that modality is
    hidden: its value zero, so no offset and no direct input (label vector, input channels). The other examples keep
    both, and have no head term. (A head trained where the offset carries its label reads the offset, not the image.)"""
    kw = {
        "structured label, offset only": {"aggregate": {"label": Aggregate("structured", 10, ConstantWeight(0.05))}},
        "unet label": {"aggregate": {"label": Aggregate("unet", 10, ConstantWeight(0.05))}},
        "backbone label": {"aggregate": {"label": Aggregate("backbone", 10)}},
        "structured label input": {"aggregate": {"label": Aggregate("structured", 10, ConstantWeight(0.05))}, "inputs": ["label"]},
        "image input": {"aggregate": {"src": Aggregate("identity", weight=ConstantWeight(0.05))}, "inputs": ["src"],
                        "heads": {"src": Head("image", "out")}},
    }[variant]
    dec = decoder(**kw)
    for name, p in dec.net.named_parameters():  # option 3's patterns are zero from a zero-initialised output
        if name.endswith(("conv2.weight", "out.2.weight")):
            torch.nn.init.normal_(p, std=0.3)
    other = next(iter(dec.heads_spec))
    seen, original = [], dec.condition

    def spy(z, values, b, device, direct=None):
        out = original(z, values, b, device, direct)
        seen.append((values[other].clone(), out))
        return out

    dec.condition = spy
    batch = {m: v for m, v in data().items() if m in ("img", other)}
    terms = JointDiffusion(dec).elbo(batch, generator=torch.Generator().manual_seed(0)).terms
    value, (cond, enc) = seen[0]
    shown = value.flatten(1).abs().sum(1) > 0
    head = terms[f"{other}/head"]
    assert 10 < int(shown.sum()) < 54  # both views occur (head_view 0.5)
    assert torch.all(head[shown] == 0) and torch.all(head[~shown] > 0)
    direct = cond.vector if cond.vector is not None else cond.image
    if direct is not None:
        assert torch.equal(direct.flatten(1).abs().sum(1) > 0, shown)
    if other in enc:  # the offset's encoding: zero exactly where the head is trained
        assert torch.equal(enc[other].flatten(1).abs().sum(1) > 0, shown)


def test_dropped_hidden_and_shown_examples(monkeypatch):
    """Three kinds of examples with condition dropout and a head: dropped (the null path: no offset, no head term),
    hidden (no offset, the head's term) and shown (the one-hot label, no head term); dropping wins over hiding."""
    import decoders.mt_diffusion as mt

    draws = iter([torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]),   # dropped where < cond_dropout: rows 0-3
                  torch.tensor([1.0, 1, 0, 0, 0, 0, 1, 1])])  # hidden where < head_view: rows 2-5
    monkeypatch.setattr(mt, "rand", lambda *a, **k: next(draws))
    dec = decoder("structured", cond_dropout=0.4)
    seen = spy_on_labels(dec)
    batch = {m: v[:8] for m, v in data().items() if m in ("img", "label")}
    head = JointDiffusion(dec).elbo(batch, generator=torch.Generator().manual_seed(0)).terms["label/head"]
    assert torch.all(seen[0][:6] == 0)
    torch.testing.assert_close(seen[0][6:], F.one_hot(batch["label"][6:], 10).float())
    assert torch.all(head[[0, 1, 2, 3, 6, 7]] == 0) and torch.all(head[[4, 5]] > 0)


def test_unconditional_sampling_through_the_null_path_keeps_every_offset_zero():
    """unconditional: dropped: a label that is not given stays dropped at every step (no re-estimation, no offset), and
    the label is read from the finished image; given labels still condition."""
    dec = decoder("structured", cond_dropout=0.2, unconditional="dropped").eval()
    torch.nn.init.normal_(dec.head_nets["label"].net[-1].weight, std=1.0)
    seen = spy_on_labels(dec)
    nothing = Observed({}, torch.zeros(4, 2, dtype=torch.bool), ("img", "label"))
    with torch.no_grad():
        out = dec.generate(None, nothing, targets=["img", "label"], generator=torch.Generator().manual_seed(0))
    chain, reread = seen[:-1], seen[-1]
    assert len(chain) > 3 and all(torch.all(v == 0) for v in chain)
    assert torch.all(reread == 0)  # the finished image is read with the label hidden, the view its head was trained on
    assert out["label"].shape == (4,) and out["img"].shape == (4, 3, 8, 8)
    seen.clear()
    label = torch.tensor([1, 2, 3, 4])
    given = Observed({"label": label}, torch.tensor([[False, True]] * 4), ("img", "label"))
    with torch.no_grad():
        dec.generate(None, given, targets=["img"], generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(v, F.one_hot(label, 10).float()) for v in seen)


def test_sampled_unconditional_draws_each_label_once_and_returns_it_with_its_image():
    """unconditional: sampled is ancestral sampling of the joint: every example's label is drawn once (uniform over
    the classes), conditions every step of the chain unchanged (no re-estimation), and is returned as the example's
    label; the same generator gives the same draws."""
    dec = decoder("structured", unconditional="sampled").eval()
    torch.nn.init.normal_(dec.head_nets["label"].net[-1].weight, std=1.0)  # a head that would change the label if read
    seen = spy_on_labels(dec)
    nothing = Observed({}, torch.zeros(200, 2, dtype=torch.bool), ("img", "label"))
    with torch.no_grad():
        out = dec.generate(None, nothing, targets=["img", "label"], generator=torch.Generator().manual_seed(0))
        again = dec.generate(None, nothing, targets=["label"], generator=torch.Generator().manual_seed(0))
    drawn = F.one_hot(out["label"], 10).float()
    assert len(seen) > 3 and all(torch.equal(v, drawn) for v in seen)
    assert torch.equal(out["label"], again["label"])
    counts = torch.bincount(out["label"], minlength=10)
    assert counts.min() >= 8 and counts.max() <= 35  # 200 uniform draws over 10 classes (expected 20 each)


def test_the_unconditional_sampling_setting_overrides_the_decoders_own_for_one_call():
    """``SamplingSettings(unconditional=...)`` gives what a decoder configured that way gives (the same draws from
    the same generator), is recorded, and leaves the decoder's own setting in place for the next call; the null path
    is refused for a decoder trained without condition dropout, and unknown settings in one line."""
    nothing = Observed({}, torch.zeros(6, 2, dtype=torch.bool), ("img", "label"))
    configured, plain = decoder("structured", unconditional="sampled").eval(), decoder("structured").eval()
    with torch.no_grad():
        want = configured.generate(None, nothing, targets=["img", "label"], generator=torch.Generator().manual_seed(3))
        got = plain.generate(None, nothing, targets=["img", "label"], sampling=SamplingSettings(unconditional="sampled"),
                             generator=torch.Generator().manual_seed(3))
        default = plain.generate(None, nothing, targets=["img", "label"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(got["label"], want["label"]) and torch.equal(got["img"], want["img"])
    assert not torch.equal(default["img"], want["img"])  # without the setting: Algorithm 1's re-estimation
    assert plain.unconditional == "reestimate"
    assert plain.describe_sampling(SamplingSettings(unconditional="sampled"))["unconditional"] == "sampled"
    assert plain.describe_sampling(SamplingSettings())["unconditional"] == "reestimate"
    assert SamplingSettings(unconditional="dropped").record()["unconditional"] == "dropped"
    with pytest.raises(ValueError, match="needs cond_dropout > 0"):
        plain.check_sampling(SamplingSettings(unconditional="dropped"))
    with pytest.raises(ValueError, match="unknown unconditional 'never'; choose reestimate, dropped or sampled"):
        SamplingSettings(unconditional="never")


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_every_parameterisation_recovers_the_image_from_the_chain_without_its_offset(prediction):
    """A network that returns the exact target (eps, v or x0) of a draw of the aggregated marginal makes Algorithm 1's
    step return that draw's clean image: each prediction is converted against ``y_t = z_t - c_t``, so with v or x0 the
    sampler, not the network, removes the offset (0.16 per pixel on average here; the tolerance is 1e-5)."""
    dec = decoder("structured", prediction=prediction).eval()
    values = {"label": F.one_hot(torch.tensor([1, 5, 8]), 10).float()}
    cond, enc = dec.condition(None, values, 3, torch.device("cpu"))
    start = dec.forward_process.given(ChainState(enc, values, {}, cond))
    g = torch.Generator().manual_seed(5)
    x0, eps, t = torch.rand(3, 3, 8, 8, generator=g) * 1.6 - 0.8, torch.randn(3, 3, 8, 8, generator=g), torch.full((3,), 0.6)
    z_t = start.sample(x0, t, eps)
    alpha, sigma = start.alpha_sigma(t)
    assert (z_t - start.remove_offset(z_t, t)).abs().mean() > 0.1  # the offset is there to be removed
    dec.network = lambda z, tt, c: (target(prediction, x0, eps, alpha, sigma), {"label": torch.zeros(3, 10)})
    with torch.no_grad():
        recovered, _ = Algorithm1(dec, None, frozenset({"label"})).step(z_t, t, start)
    torch.testing.assert_close(recovered, x0, atol=1e-5, rtol=0)


def test_guidance_combines_the_conditional_and_null_predictions_on_the_same_chain():
    """With guidance w the step's prediction is null + w (cond - null), the null network reading y_t = z_t - c_t (the
    chain without the offset): checked against the two network calls made by hand."""
    dec = decoder("structured", cond_dropout=0.2).eval()
    torch.nn.init.normal_(dec.net.out[-1].weight, std=0.3)
    values = {"label": F.one_hot(torch.tensor([1, 5, 8]), 10).float()}
    cond, enc = dec.condition(None, values, 3, torch.device("cpu"))
    start = dec.forward_process.given(ChainState(enc, values, {}, cond))
    z_t, t = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.full((3,), 0.6)
    with torch.no_grad():
        guided, _ = Algorithm1(dec, None, frozenset({"label"}), guidance=2.5).step(z_t, t, start)
        y_t = start.remove_offset(z_t, t)
        c, _ = dec.network(z_t, t, cond)
        n, _ = dec.network(y_t, t, dec.condition(None, dec.null_values(values), 3, torch.device("cpu"))[0])
        alpha, sigma = start.alpha_sigma(t)
        expected = to_x0(dec.prediction, n + 2.5 * (c - n), y_t, alpha, sigma).clamp(-1, 1)
        plain, _ = Algorithm1(dec, None, frozenset({"label"})).step(z_t, t, start)
    torch.testing.assert_close(guided, expected)
    assert (guided - plain).abs().max() > 1e-3
    assert dec.describe_sampling(SamplingSettings(guidance=2.5))["guidance"] == 2.5


@pytest.mark.parametrize("kw, message", [
    ({"unconditional": "dropped"}, "needs cond_dropout > 0"),
    ({"cond_dropout": 1.0}, r"cond_dropout must be in \[0, 1\)"),
    ({"unconditional": "always"}, "unknown unconditional 'always'; choose reestimate, dropped or sampled"),
])
def test_null_path_settings_are_checked_in_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        decoder("structured", **kw)
    with pytest.raises(ValueError, match="unknown encoder kind 'clip'; choose identity, embedding, structured, unet or backbone"):
        Aggregate("clip", 10)


def test_a_baseline_can_take_the_input_scaling_of_the_model_it_is_compared_with():
    """c_in_from: a single-task baseline (zero offset) scales its input by the c_in of the MT-Diffusion model's weights,
    1 / sqrt(1 + atilde_t^2), instead of by 1."""
    from decoders.diffusion.aggregation import PaperWeight

    weight = PaperWeight(1.0)  # T = 20 steps here: atilde_T is about 4
    model = decoder("structured", aggregate={"label": Aggregate("structured", 10, weight)})
    plain = decoder("structured", aggregate={"label": Aggregate("structured", 10, ConstantWeight(0.0))})
    baseline = decoder("structured", aggregate={"label": Aggregate("structured", 10, ConstantWeight(0.0))}, c_in_from={"label": weight})
    assert torch.all(plain.c_in == 1) and torch.equal(baseline.c_in, model.c_in) and model.c_in[-1] < 0.3
    torch.testing.assert_close(model.c_in, (1 + model.forward_process.atilde[0] ** 2).rsqrt().float())


def test_algorithm_1_reads_a_head_with_its_modality_hidden_from_the_chain():
    """Re-estimating a label, Algorithm 1 reads its head where the head was trained: on ``z_t`` with that label's
    offset removed and the label zero; the new estimate is that pass's (soft here, to tell the passes apart)."""
    dec = decoder("structured", aggregate={"label": Aggregate("structured", 10, ConstantWeight(2.0))}, label_estimates="soft").eval()
    torch.nn.init.normal_(dec.head_nets["label"].net[-1].weight, std=1.0)
    values = {"label": F.one_hot(torch.tensor([1, 5, 8, 2, 0, 9]), 10).float()}
    cond, enc = dec.condition(None, values, 6, torch.device("cpu"))
    start = dec.forward_process.given(ChainState(enc, values, {}, cond))
    z_t, t = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4)), torch.full((6,), 0.6)
    calls, original = [], dec.network

    def spy(z, tt, c):
        out = original(z, tt, c)
        calls.append((z, out[1]["label"]))
        return out

    dec.network = spy
    with torch.no_grad():
        _, following = Algorithm1(dec, None, frozenset()).step(z_t, t, start)
    assert len(calls) == 2
    torch.testing.assert_close(calls[1][0], start.remove_offset(z_t, t))
    assert (calls[0][1] - calls[1][1]).abs().max() > 1e-3  # the two views read differently
    torch.testing.assert_close(following.cond.current["label"], calls[1][1].softmax(-1))
