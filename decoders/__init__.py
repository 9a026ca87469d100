"""Decoders. Every decoder implements the contract of :mod:`decoders.base`: named per-example loss terms given ``z``
and the observed example, and generation of its target modalities given ``z``, the observed modalities and a
:class:`~decoders.sampling.SamplingSettings` value."""

from decoders.base import Decoder, Observed
from decoders.context import ContextImageDecoder
from decoders.diffusion_decoder import DiffusionDecoder
from decoders.feedforward import ConvImageDecoder, FeedForwardDecoder, MLPDecoder
from decoders.likelihoods import Likelihood, log_prob
from decoders.mt_diffusion import Aggregate, Head, MTDiffusionDecoder
from decoders.sampling import SamplingSettings, TextSampling
from decoders.text import TextDecoder

__all__ = ["Aggregate", "Head", "MTDiffusionDecoder", "ContextImageDecoder", "ConvImageDecoder", "Decoder", "DiffusionDecoder", "FeedForwardDecoder", "Likelihood", "MLPDecoder",
           "Observed", "SamplingSettings", "TextDecoder", "TextSampling", "log_prob"]
