"""Product-of-experts subset posteriors and the mixture over subsets, vectorized."""

from __future__ import annotations

import torch
from torch import Tensor

from decoders.random import rand, randn, randperm


def product_of_experts(mu: Tensor, logvar: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """PoE over the experts selected by ``mask`` together with the prior expert ``N(0, I)``.

    Precision ``P_A = 1 + sum_{m in A} 1/sigma_m^2``, mean ``mu_A = (sum_{m in A} mu_m/sigma_m^2) / P_A``.

    Args:
        mu, logvar: stacked unimodal experts ``[M, B, d]``.
        mask: ``[S, M]`` (same subsets for every example) or ``[S, B, M]`` (per example, e.g. with missing
            modalities); true where the modality belongs to the subset.
    Returns:
        ``(mu_A, logvar_A)``, each ``[S, B, d]``.
    """
    if mask.dim() == 2:
        mask = mask[:, None, :].expand(-1, mu.shape[1], -1)
    w = mask.to(mu.dtype)
    precision = torch.exp(-logvar)
    total_precision = 1.0 + torch.einsum("sbm,mbd->sbd", w, precision)
    mu_a = torch.einsum("sbm,mbd->sbd", w, mu * precision) / total_precision
    return mu_a, -torch.log(total_precision)


def mixture_weights(mask: Tensor) -> Tensor:
    """Uniform mixture weights ``omega [S, B]`` over the subsets that have at least one present modality.

    Args:
        mask: ``[S, B, M]`` subset-and-present mask.
    Raises:
        ValueError: when an example has no modality at all.
    """
    valid = mask.any(dim=-1).to(torch.float32)
    count = valid.sum(dim=0)
    if bool((count == 0).any()):
        bad = int((count == 0).nonzero()[0])
        raise ValueError(f"example {bad} of the batch has no observed modality")
    return valid / count


def stratified_subset_choice(omega: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One subset index per example ``[B]``, drawn from ``omega [S, B]``, stratified over the batch.

    Example ``b`` gets the quantile ``u_b = (pi(b) + U_b) / B`` of its own weights, with ``pi`` a random
    permutation: each example's draw is exactly distributed as ``omega[:, b]`` (so the estimate of
    ``sum_A omega_A E_{q_A}[...]`` is unbiased), and with shared weights every subset gets ``B/S`` examples
    up to rounding.
    """
    _, batch = omega.shape
    perm = randperm(batch, generator, omega.device)
    u = (perm.to(omega.dtype) + rand((batch,), generator, omega.device, omega.dtype)) / batch
    cdf = omega.cumsum(dim=0)
    index = (cdf < u[None, :]).sum(dim=0)
    return index.clamp(max=omega.shape[0] - 1)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``mu + sigma * eps`` with ``eps ~ N(0, I)`` drawn from ``generator``."""
    eps = randn(tuple(mu.shape), generator, mu.device, mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps
