"""The aggregate posterior draws, `diffmvae prior fit` and `diffmvae sample --prior`, and their errors."""

import hashlib

import numpy as np
import pytest
import torch
from conftest import tiny_image_vae

from diffmvae.commands.main import main
from diffmvae.generation.latent_prior import AggregatePosterior
from diffmvae.model.posterior import product_of_experts
from diffmvae.store.prior_file import default_prior_path, load_prior

PRIOR_ARGS = ["--prior.channels", "[8,8]", "--prior.emb_dim", "8", "--fit.steps", "3", "--fit.batch_size", "8",
              "--fit.statistics_samples", "32", "--fit.warmup_steps", "1", "--prior.sample_steps", "3"]


def experts(n=3, m=3, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, d, generator=g) * 3, torch.randn(n, m, d, generator=g) - 1


def test_mixture_draws_have_the_mixture_mean():
    """Draws of one example average sum_A omega_A mu_A over the 2^M - 1 subsets."""
    mu, logvar = experts(n=1)
    model = tiny_image_vae(3, latent_dim=2)
    draw = AggregatePosterior(mu, logvar, torch.ones(1, 3, dtype=torch.bool), model.subset_mask)
    z = draw(200_000, torch.Generator().manual_seed(0))
    mu_s, _ = product_of_experts(mu.transpose(0, 1), logvar.transpose(0, 1), model.subset_mask)
    torch.testing.assert_close(z.mean(0), mu_s[:, 0].mean(0), atol=0.03, rtol=0)
    joint = AggregatePosterior(mu, logvar, torch.ones(1, 3, dtype=torch.bool), model.subset_mask, family="joint")
    mu_j, logvar_j = product_of_experts(mu.transpose(0, 1), logvar.transpose(0, 1), torch.ones(1, 3, dtype=torch.bool))
    zj = joint(100_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(zj.mean(0), mu_j[0, 0], atol=0.02, rtol=0)
    torch.testing.assert_close(zj.var(0), logvar_j[0, 0].exp(), rtol=0.03, atol=0)


def test_missing_modalities_never_enter_a_draw():
    mu, logvar = experts(n=2)
    mu[:, 1] = 1000.0  # m1's expert is absurd and missing for both examples
    present = torch.tensor([[True, False, True], [True, False, False]])
    model = tiny_image_vae(3, latent_dim=2)
    for family in ("mixture", "joint"):
        z = AggregatePosterior(mu, logvar, present, model.subset_mask, family)(5000, torch.Generator().manual_seed(0))
        assert z.abs().max() < 100


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def with_prior(trained):
    _, ckpt = trained
    before = sha(ckpt)
    assert main(["prior", "fit", "--ckpt", str(ckpt), *PRIOR_ARGS]) == 0
    assert sha(ckpt) == before, "fitting a prior modified the model checkpoint"
    return ckpt, default_prior_path(ckpt)


def test_prior_fit_writes_its_own_checkpoint(with_prior):
    ckpt, prior_path = with_prior
    assert prior_path.name == "last.prior.ckpt" and prior_path.parent == ckpt.parent
    raw = torch.load(prior_path, weights_only=True)
    assert raw["model"]["latent_dim"] == 4 and raw["model"]["sha256"] == sha(ckpt)
    assert raw["fit"]["settings"]["steps"] == 3 and raw["prior"]["init_args"]["channels"] == [8, 8]
    from diffmvae.store.load import load_run

    prior = load_prior(prior_path, load_run(ckpt).module.model, ckpt)
    assert prior.latent_dim == 4 and torch.all(prior.std > 0)


def test_sample_uses_the_score_prior_by_default(with_prior, tmp_path):
    ckpt, _ = with_prior
    runs = {}
    for name, extra in (("auto", []), ("again", []), ("gaussian", ["--prior", "gaussian"])):
        assert main(["sample", "--ckpt", str(ckpt), "--given", "none", "--n", "6", "--out", str(tmp_path / name), "--seed", "3", *extra]) == 0
        runs[name] = np.load(tmp_path / name / "samples.npz")
    assert str(runs["auto"]["prior"]) == "score" and str(runs["gaussian"]["prior"]) == "gaussian"
    assert "label" not in runs["auto"].files  # unconditional samples have no true label
    np.testing.assert_array_equal(runs["auto"]["m0"], runs["again"]["m0"])
    assert not np.array_equal(runs["auto"]["m0"], runs["gaussian"]["m0"])
    # --prior_steps is passed with the prior, recorded, and changes the draw (the prior file says 3 steps)
    assert main(["sample", "--ckpt", str(ckpt), "--given", "none", "--n", "6", "--out", str(tmp_path / "s2"), "--seed", "3",
                 "--prior_steps", "2"]) == 0
    two = np.load(tmp_path / "s2" / "samples.npz")
    assert str(two["prior"]) == "score (DDIM-2)" and not np.array_equal(two["m0"], runs["auto"]["m0"])


def test_existing_prior_is_not_overwritten(with_prior, capsys):
    ckpt, prior_path = with_prior
    before = sha(prior_path)
    assert main(["prior", "fit", "--ckpt", str(ckpt), *PRIOR_ARGS]) == 2
    assert "already exists" in capsys.readouterr().err and sha(prior_path) == before
    assert main(["prior", "fit", "--ckpt", str(ckpt), "--out", str(ckpt), *PRIOR_ARGS]) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prior", "fit", "--ckpt", "nope.ckpt"], "checkpoint nope.ckpt does not exist"),
        (["prior", "fit", "--ckpt", "x.ckpt", "--prior.chanels", "[8]"], "chanels"),
        (["prior", "fit", "--ckpt", "x.ckpt", "--fit.steps", "many"], "fit.steps"),
        (["prior", "fit", "--ckpt", "x.ckpt", "--prior.prediction", "score"], "prediction"),
        (["prior", "train"], "the only prior command is `fit`"),
    ],
)
def test_prior_fit_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_sample_prior_errors(with_prior, tmp_path, capsys):
    ckpt, prior_path = with_prior
    base = ["sample", "--ckpt", str(ckpt), "--given", "none", "--n", "2", "--out", str(tmp_path / "o")]
    assert main([*base, "--prior", "score", "--prior_ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "no score prior at" in capsys.readouterr().err
    # A prior for another latent size: one line naming both sizes.
    raw = torch.load(prior_path, weights_only=True)
    raw["model"]["latent_dim"] = 8
    other = tmp_path / "other.prior.ckpt"
    torch.save(raw, other)
    assert main([*base, "--prior_ckpt", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "8-d latent" in err and "4 dimensions" in err
    assert main([*base, "--prior_ckpt", str(ckpt)]) == 2
    assert "not a latent-prior checkpoint" in capsys.readouterr().err
