import math
from itertools import combinations

import pytest
import torch

from diffmvae.model.posterior import mixture_weights, product_of_experts, stratified_subset_choice
from diffmvae.model.subsets import subset_mask, subset_names


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_mopoe_enumerates_every_nonempty_subset_once(m):
    mask = subset_mask(m, "mopoe")
    assert mask.shape == (2**m - 1, m)
    rows = {tuple(r.tolist()) for r in mask}
    assert len(rows) == 2**m - 1
    assert all(any(r) for r in rows)
    sizes = mask.sum(1).tolist()
    assert sizes == sorted(sizes)  # ordered by subset size


def test_poe_and_moe_families():
    assert subset_mask(4, "poe").tolist() == [[True] * 4]
    assert torch.equal(subset_mask(4, "moe"), torch.eye(4, dtype=torch.bool))


def test_subset_names_and_bad_family():
    names = subset_names(subset_mask(3, "mopoe"), ("a", "b", "c"))
    assert names == [c for k in (1, 2, 3) for c in combinations("abc", k)]
    with pytest.raises(ValueError, match="unknown subset family 'mvtcae'"):
        subset_mask(3, "mvtcae")


def test_poe_matches_precision_weighted_closed_form():
    g = torch.Generator().manual_seed(0)
    M, B, d = 4, 3, 5
    mu = torch.randn(M, B, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(M, B, d, generator=g, dtype=torch.float64)
    mask = subset_mask(M, "mopoe")
    mu_a, logvar_a = product_of_experts(mu, logvar, mask)
    assert mu_a.shape == logvar_a.shape == (2**M - 1, B, d)
    for s, row in enumerate(mask):
        prec = 1.0 + sum(1 / logvar[m].exp() for m in range(M) if row[m])  # prior expert has precision 1
        mean = sum(mu[m] / logvar[m].exp() for m in range(M) if row[m]) / prec
        torch.testing.assert_close(mu_a[s], mean)
        torch.testing.assert_close(logvar_a[s], -prec.log())


def test_poe_with_per_example_mask_ignores_missing_experts():
    mu = torch.tensor([[[1.0]], [[100.0]]])  # [M=2, B=1, d=1]
    logvar = torch.zeros(2, 1, 1)
    mask = torch.tensor([[[True, False]]])  # [S=1, B=1, M=2]: expert 1 is missing
    mu_a, logvar_a = product_of_experts(mu, logvar, mask)
    assert mu_a.item() == pytest.approx(0.5)  # N(1, 1) x N(0, 1) prior
    assert logvar_a.item() == pytest.approx(-math.log(2))


def test_mixture_weights_uniform_over_valid_subsets():
    mask = subset_mask(3, "mopoe")[:, None, :] & torch.tensor([[True, True, True], [True, False, False]])[None]
    omega = mixture_weights(mask)
    torch.testing.assert_close(omega.sum(0), torch.ones(2))
    assert torch.allclose(omega[:, 0], torch.full((7,), 1 / 7))
    assert omega[:, 1].count_nonzero() == 4  # subsets containing m0: {0}, {0,1}, {0,2}, {0,1,2}
    with pytest.raises(ValueError, match="example 0 of the batch has no observed modality"):
        mixture_weights(torch.zeros(3, 1, 3, dtype=torch.bool))


def test_stratified_choice_covers_subsets_evenly_and_respects_weights():
    omega = torch.full((7, 70), 1 / 7)
    idx = stratified_subset_choice(omega, torch.Generator().manual_seed(0))
    assert torch.bincount(idx, minlength=7).tolist() == [10] * 7
    # Zero-weight subsets are never chosen.
    omega = torch.zeros(3, 50)
    omega[2] = 1.0
    assert (stratified_subset_choice(omega, torch.Generator().manual_seed(1)) == 2).all()


def test_stratified_choice_is_unbiased():
    omega = torch.tensor([[0.2], [0.5], [0.3]]).expand(3, 1).contiguous()
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([stratified_subset_choice(omega, g) for _ in range(4000)]), minlength=3)
    torch.testing.assert_close(counts / 4000.0, torch.tensor([0.2, 0.5, 0.3]), atol=0.03, rtol=0)
