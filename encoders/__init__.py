"""Per-modality encoders. Each maps a modality's batch to a Gaussian expert ``(mu, logvar)``, both ``[B, d]``."""

from encoders.base import Encoder
from encoders.image import ConvImageEncoder
from encoders.mlp import MLPEncoder
from encoders.text import TextEncoder

__all__ = ["Encoder", "ConvImageEncoder", "MLPEncoder", "TextEncoder"]
