"""Priors over the shared latent ``z``: the standard normal of the ELBO and the auxiliary latent score prior."""

from priors.gaussian import StandardNormalPrior, kl_standard_normal
from priors.score import PriorSampling, ScorePrior
from priors.unet1d import UNet1d

__all__ = ["PriorSampling", "ScorePrior", "StandardNormalPrior", "UNet1d", "kl_standard_normal"]
