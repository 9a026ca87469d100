"""Per-modality decoders: feed-forward likelihood decoders now, diffusion decoders beside them.

Every decoder implements :class:`decoders.base.Decoder`: ``loss(x, z) -> [B]`` (the per-example term the ELBO
subtracts) and ``generate(z, generator=...)`` (a sample in data space).
"""

from decoders.base import Decoder
from decoders.diffusion_decoder import DiffusionDecoder
from decoders.feedforward import ConvImageDecoder, MLPDecoder
from decoders.likelihoods import Likelihood, log_prob

__all__ = ["DiffusionDecoder", "Decoder", "ConvImageDecoder", "MLPDecoder", "Likelihood", "log_prob"]
