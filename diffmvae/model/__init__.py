"""The model: what is trained, sampled and evaluated.

* :class:`MultimodalModel` (``base``): the interface every model implements and its defaults;
* :class:`MultimodalVAE` (``vae``): the mixture-of-subsets VAE, with ``posterior`` (products and mixtures of
  experts), ``subsets`` (the subset families) and ``elbo`` (the record of the objective's terms);
* :class:`JointDiffusion` (``joint``): one MT-Diffusion network over all modalities, no latent;
* :class:`Composition` (``composition``): which sources compose a missing modality within one model.
"""

from diffmvae.model.base import LatentPrior, MultimodalModel
from diffmvae.model.composition import Composition
from diffmvae.model.elbo import ELBORecord
from diffmvae.model.joint import JointDiffusion
from diffmvae.model.posterior import product_of_experts
from diffmvae.model.subsets import subset_mask
from diffmvae.model.vae import MultimodalVAE

__all__ = ["Composition", "ELBORecord", "JointDiffusion", "LatentPrior", "MultimodalModel", "MultimodalVAE", "product_of_experts",
           "subset_mask"]
