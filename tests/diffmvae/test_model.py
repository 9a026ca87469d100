import itertools

import pytest
import torch
from conftest import LATENT, image_batch, tiny_image_vae

from decoders import ContextImageDecoder, ConvImageDecoder, Decoder, DiffusionDecoder
from decoders.diffusion import DDIM, DDPMProcess
from diffmvae.model.vae import MultimodalVAE
from encoders import ConvImageEncoder
from priors import kl_standard_normal


@pytest.mark.parametrize("family", ["mopoe", "poe", "moe"])
def test_elbo_complete_batch_is_finite_and_differentiable(family):
    torch.manual_seed(0)
    vae = tiny_image_vae(3, family)
    rec = vae.elbo(image_batch())
    loss = rec.loss(beta=2.0)
    assert loss.shape == (6,)
    assert torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in vae.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert set(rec.terms) == {"m0/nll", "m1/nll", "m2/nll", "kl"} and rec.terms["kl"].shape == (6,)
    torch.testing.assert_close(loss, rec.terms["m0/nll"] + rec.terms["m1/nll"] + rec.terms["m2/nll"] + 2.0 * rec.terms["kl"])


def test_record_weights_by_modality_and_kind():
    rec = tiny_image_vae().elbo(image_batch())
    weighted = rec.loss(beta=0.5, modality_weights={"m1": 3.0}, term_weights={"nll": 2.0, "m2/nll": 0.1})
    t = rec.terms
    torch.testing.assert_close(weighted, 2.0 * t["m0/nll"] + 6.0 * t["m1/nll"] + 0.1 * t["m2/nll"] + 0.5 * t["kl"])


def test_elbo_incomplete_batch_masks_missing_modalities(image_vae):
    x = image_batch()
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    rec = image_vae.elbo(x, present)
    for i, m in enumerate(("m0", "m1", "m2")):
        assert (rec.terms[f"{m}/nll"][~present[:, i]] == 0).all()
        assert (rec.terms[f"{m}/nll"][present[:, i]] > 0).all()
    # An example's z comes from the present part of its drawn subset, never empty ...
    assert (image_vae.subset_mask[rec.subset] & present).any(dim=1).all()
    # ... and a missing modality's placeholder expert never enters a posterior: with only m0 present (row 1) every
    # valid subset's PoE is q(z | x_m0), so the KL term is that posterior's, computed from m0 alone.
    with torch.no_grad():
        alone = kl_standard_normal(*image_vae.posterior({"m0": x["m0"][1:2]}))
    torch.testing.assert_close(rec.terms["kl"][1:2].detach(), alone)
    rec.loss().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in image_vae.parameters() if p.grad is not None)


def test_elbo_with_a_modality_absent_from_the_batch(image_vae):
    x = image_batch()
    del x["m1"]
    rec = image_vae.elbo(x)
    assert set(rec.terms) == {"m0/nll", "m2/nll", "kl"}
    assert torch.isfinite(rec.loss()).all()


def test_kl_is_mixture_of_subset_kls(image_vae):
    """The ELBO's KL term against the MoPoE formula written out from the encoders' outputs: the mean over the seven
    non-empty subsets of KL(PoE of the subset's experts and the prior || N(0, I)), each KL in closed form."""
    x = image_batch()
    with torch.no_grad():
        experts = {m: [v.double() for v in image_vae.encoders[m](x[m])] for m in x}
        kl = image_vae.elbo(x).terms["kl"].double()
    subsets = [s for r in (1, 2, 3) for s in itertools.combinations(("m0", "m1", "m2"), r)]
    expected = torch.zeros(6, dtype=torch.float64)
    for subset in subsets:
        precision = 1 + sum(experts[m][1].neg().exp() for m in subset)
        mean = sum(experts[m][0] * experts[m][1].neg().exp() for m in subset) / precision
        var = 1 / precision
        expected += 0.5 * (var + mean**2 - 1 - var.log()).sum(1) / len(subsets)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-6)


def test_model_posterior_is_the_precision_weighted_product_of_its_encoders(image_vae):
    """q(z|x_A) of the model against the PoE formula written out per example and dimension from the encoders' own
    outputs, with the prior N(0, 1) as an expert: precision 1 + sum 1/var_m, mean sum(mu_m / var_m) / precision."""
    x = image_batch()
    experts = {m: [v.double() for v in image_vae.encoders[m](x[m])] for m in x}
    for subset in (["m0"], ["m1", "m2"], ["m0", "m1", "m2"]):
        with torch.no_grad():
            mu, logvar = image_vae.posterior({m: x[m] for m in subset})
        for b in range(6):
            for d in range(LATENT):
                precision = 1.0 + sum(1.0 / experts[m][1][b, d].exp() for m in subset)
                mean = sum(experts[m][0][b, d] / experts[m][1][b, d].exp() for m in subset) / precision
                assert mu[b, d].item() == pytest.approx(mean.item(), rel=1e-4, abs=1e-5)
                assert logvar[b, d].item() == pytest.approx(-precision.log().item(), rel=1e-4, abs=1e-5)


def test_mixed_image_and_label_modalities(mixed_vae):
    x = {"img": torch.rand(5, 3, 8, 8), "label": torch.tensor([0, 3, 9, 1, 2])}
    rec = mixed_vae.elbo(x)
    assert torch.isfinite(rec.loss()).all()
    out = mixed_vae.generate({"img": x["img"]}, generator=torch.Generator().manual_seed(0))
    assert out["label"].shape == (5,) and out["label"].dtype == torch.long
    out = mixed_vae.generate({"label": x["label"]}, generator=torch.Generator().manual_seed(0))
    assert out["img"].shape == (5, 3, 8, 8) and 0 <= out["img"].min() and out["img"].max() <= 1


def test_generate_from_any_subset_keeps_observed_and_is_seeded(image_vae):
    x = image_batch()
    for given in (["m0"], ["m1", "m2"], []):
        obs = {m: x[m] for m in given}
        a = image_vae.generate(obs, 6, generator=torch.Generator().manual_seed(3))
        b = image_vae.generate(obs, 6, generator=torch.Generator().manual_seed(3))
        c = image_vae.generate(obs, 6, generator=torch.Generator().manual_seed(4))
        assert set(a) == {"m0", "m1", "m2"}
        for m in given:
            assert a[m] is x[m]
        missing = [m for m in a if m not in given]
        assert all(torch.equal(a[m], b[m]) for m in missing)
        assert any(not torch.equal(a[m], c[m]) for m in missing)


def test_posterior_narrows_with_more_modalities(image_vae):
    x = image_batch()
    _, lv1 = image_vae.posterior({"m0": x["m0"]})
    _, lv3 = image_vae.posterior(x)
    assert (lv3 < lv1).all() and lv1.shape == (6, LATENT)


def test_bad_inputs_are_named(image_vae):
    with pytest.raises(KeyError, match="unknown modality 'm7'"):
        image_vae.generate({"m7": torch.rand(2, 3, 8, 8)})
    with pytest.raises(ValueError, match="n >= 1"):
        image_vae.generate(None, 0)
    with pytest.raises(ValueError, match="latent_dim 4, the model 5"):
        MultimodalVAE(dict(image_vae.encoders), {m: ConvImageDecoder(5, image_size=8, channels=(4,)) for m in image_vae.modalities}, 5)


def encoders(names=("m0", "m1", "m2")):
    return {m: ConvImageEncoder(LATENT, image_size=8, channels=(4, 4), hidden_dim=8) for m in names}


def ff(**kw):
    return ConvImageDecoder(LATENT, image_size=8, channels=(4,), hidden_dim=8, **kw)


def test_decoders_are_bound_to_modalities_and_checked():
    shared = DiffusionDecoder(LATENT, DDPMProcess(sampler=DDIM(2)), image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,),
                              mean_hidden=8, modalities=["m1", "m2"])
    vae = MultimodalVAE(encoders(), {"m0": ff(), "images": shared}, LATENT)
    assert vae.decoder_of == {"m0": "m0", "m1": "images", "m2": "images"}
    rec = vae.elbo(image_batch())
    assert set(rec.terms) == {"m0/nll", "m1/mean_nll", "m1/diffusion", "m2/mean_nll", "m2/diffusion", "kl"}
    out = vae.generate({"m1": image_batch()["m1"]}, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"m0", "m1", "m2"} and out["m2"].shape == (6, 3, 8, 8)
    with pytest.raises(ValueError, match="modality 'm1' is generated by two decoders, 'images' and 'm1'"):
        MultimodalVAE(encoders(), {"m0": ff(), "images": shared, "m1": ff()}, LATENT)
    with pytest.raises(ValueError, match="no decoder generates modality 'm2'"):
        MultimodalVAE(encoders(), {"m0": ff(), "m1": ff()}, LATENT)
    with pytest.raises(ValueError, match="decoder 'x' names modality 'x'"):
        MultimodalVAE(encoders(), {"m0": ff(), "m1": ff(), "m2": ff(), "x": ff()}, LATENT)
    with pytest.raises(ValueError, match="decoder 'm1' names modality 'm9'"):
        MultimodalVAE(encoders(), {"m0": ff(), "m1": ContextImageDecoder(LATENT, "m9", context_size=8, image_size=8, channels=(4,)), "m2": ff()}, LATENT)


def test_a_decoder_must_name_its_terms_after_its_modalities():
    class Liar(Decoder):
        def loss(self, z, example, *, generator=None, skip=frozenset()):
            return {"m0/nll": z.sum(1)}

    with pytest.raises(ValueError, match="decoder 'm1' returned term 'm0/nll'"):
        MultimodalVAE(encoders(), {"m0": ff(), "m1": Liar(), "m2": ff()}, LATENT).elbo(image_batch())


def test_decoders_see_the_observed_example_but_never_their_target_when_generating():
    seen = {}

    class Spy(Decoder):
        def loss(self, z, example, *, generator=None, skip=frozenset()):
            seen["loss"] = (set(example.data), example.present.clone())
            return {"m1/nll": z.pow(2).sum(1)}

        def generate(self, z, given, *, targets, sampling=None, generator=None):
            seen["generate"] = set(given.data)
            return {m: torch.zeros(z.shape[0], 3, 8, 8) for m in targets}

    vae = MultimodalVAE(encoders(), {"m0": ff(), "m1": Spy(), "m2": ff()}, LATENT)
    present = torch.tensor([[1, 1, 0]] * 3 + [[1, 1, 1]] * 3, dtype=torch.bool)
    vae.elbo(image_batch(), present)
    assert seen["loss"][0] == {"m0", "m1", "m2"} and torch.equal(seen["loss"][1], present)
    x = image_batch()
    vae.generate({"m0": x["m0"], "m2": x["m2"]}, generator=torch.Generator().manual_seed(0))
    assert seen["generate"] == {"m0", "m2"}
