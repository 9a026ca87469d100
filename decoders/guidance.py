"""Conditions of a backbone for guidance and composition: the null condition (every example dropped, the
unconditional prediction of a backbone trained with condition dropout) and batching several conditions into one
call. Classifier-free guidance (Ho & Salimans 2022) is the one-source case of :mod:`decoders.composition`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import torch
from torch import Tensor

from decoders.unet import Condition


def _drop_mask(cond: Condition, value: bool) -> Tensor:
    """A ``[B]`` bool mask filled with ``value``, on the device of the condition's first tensor."""
    ref = next(v for v in (cond.z, cond.image, cond.shift) if v is not None)
    return torch.full((ref.shape[0],), value, dtype=torch.bool, device=ref.device)


def null_condition(cond: Condition) -> Condition:
    """``cond`` with every example's condition replaced by the learned null."""
    return replace(cond, drop=_drop_mask(cond, True))


def cat_conditions(conds: Sequence[Condition]) -> Condition:
    """Concatenate conditions along the batch (``drop`` defaults to all-false where missing)."""
    def cat(field: str) -> Tensor | None:
        values = [getattr(c, field) for c in conds]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):
            raise ValueError(f"cannot batch conditions where only some have {field!r}")
        return torch.cat(values)

    drops = [c.drop if c.drop is not None else _drop_mask(c, False) for c in conds]
    return Condition(**{f.name: cat(f.name) for f in fields(Condition) if f.name != "drop"}, drop=torch.cat(drops))
