"""Priors over the shared latent ``z``: the standard normal of the ELBO (and, later, learned score priors)."""

from priors.gaussian import StandardNormalPrior, kl_standard_normal

__all__ = ["StandardNormalPrior", "kl_standard_normal"]
