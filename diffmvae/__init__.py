"""diffmvae: multimodal VAEs with feed-forward and diffusion decoders (Diff-MVAE, MoPoE, MT-Diffusion).

The top-level package composes ``encoders``, ``decoders`` and ``priors`` (imports run one way: those three
never import ``diffmvae``).
"""

from diffmvae.elbo import ELBORecord
from diffmvae.joint import JointDiffusion
from diffmvae.model import MultimodalModel, MultimodalVAE
from diffmvae.posterior import product_of_experts
from diffmvae.subsets import subset_mask
from diffmvae.training import TrainingModule

__all__ = ["JointDiffusion", "ELBORecord", "MultimodalModel", "MultimodalVAE", "TrainingModule", "product_of_experts", "subset_mask"]
__version__ = "0.2.0"
