"""Learning-rate schedules shared by every trainer in the library (the multimodal VAE and the latent prior;
``priors`` already depends on ``decoders``, so this is the lowest common place)."""

from __future__ import annotations

import math
from typing import Literal

LRSchedule = Literal["constant", "cosine"]


def lr_factor(step: int, *, schedule: LRSchedule, warmup: int, total: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step``: a linear warm-up over ``warmup`` steps,
    then constant or a cosine decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
