import pytest
import torch

from conftest import LATENT, image_batch, tiny_image_vae
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
    assert set(rec.nll) == {"m0", "m1", "m2"} and rec.kl.shape == (6,)


def test_elbo_incomplete_batch_masks_missing_modalities(image_vae):
    x = image_batch()
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    rec = image_vae.elbo(x, present)
    for i, m in enumerate(("m0", "m1", "m2")):
        assert (rec.nll[m][~present[:, i]] == 0).all()
        assert (rec.nll[m][present[:, i]] > 0).all()
    chosen = image_vae.subset_mask[rec.subset]  # the assigned subset only uses present modalities
    assert not (chosen & ~present).all(dim=1).any()
    assert ((chosen & present).any(dim=1)).all()
    rec.loss().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in image_vae.parameters() if p.grad is not None)


def test_elbo_with_a_modality_absent_from_the_batch(image_vae):
    x = image_batch()
    del x["m1"]
    rec = image_vae.elbo(x)
    assert set(rec.nll) == {"m0", "m2"}
    assert torch.isfinite(rec.loss()).all()


def test_kl_is_mixture_of_subset_kls(image_vae):
    x = image_batch()
    mu_s, logvar_s, omega = image_vae.subset_posteriors(x)
    expected = (omega * kl_standard_normal(mu_s, logvar_s)).sum(0)
    torch.testing.assert_close(image_vae.elbo(x).kl, expected)


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
        from diffmvae.model import MultimodalVAE

        MultimodalVAE(dict(image_vae.encoders), dict(image_vae.decoders), 5)
