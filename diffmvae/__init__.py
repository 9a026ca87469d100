"""diffmvae: multimodal VAEs with feed-forward and diffusion decoders (Diff-MVAE, MoPoE, MT-Diffusion).

The top-level package composes ``encoders``, ``decoders`` and ``priors`` (imports run one way: those three
never import ``diffmvae``). Inside it, the rooms import one way too: ``io`` and ``devices``, then ``data``,
``model``, ``training``, ``store``, ``generation``, ``evaluation``, ``pipeline`` and ``commands``.
"""

from diffmvae.model import ELBORecord, JointDiffusion, MultimodalModel, MultimodalVAE, product_of_experts, subset_mask
from diffmvae.training import TrainingModule
from diffmvae.version import __version__

__all__ = [
           "ELBORecord",
           "JointDiffusion",
           "MultimodalModel",
           "MultimodalVAE",
           "TrainingModule",
           "__version__",
           "product_of_experts",
           "subset_mask",
]
