"""Classifier-free guidance and its generalisation, the composition of several conditional predictions
(Ho & Salimans 2022; Unite-and-Conquer, seed 001): for a backbone trained with condition dropout,

    out(x_t, t) = out(x_t, t | null) + sum_i w_i [out(x_t, t | c_i) - out(x_t, t | null)].

One condition with ``w = 1`` is the plain conditional prediction, ``w = 0`` the unconditional one, ``w > 1``
guidance. The combination is taken on the backbone output; eps, v and x0 are affine in it with the same
coefficients at a given ``t`` (and, for the residual decoders, every prediction is expressed for the whole image
``x``), so the result is the same combination of clean estimates whatever the parameterisation. All predictions
run as one batched call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields, replace

import torch
from torch import Tensor

from decoders.diffusion.parameterization import Backbone
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


def compose(net: Backbone, conds: Sequence[Condition], weights: Sequence[float]) -> Callable[[Tensor, Tensor, object], Tensor]:
    """A backbone ``(x_t, t, _) -> out(null) + sum_i w_i (out(c_i) - out(null))`` for fixed conditions ``conds``
    (each ``[B]`` examples), evaluated in one call on ``(len(conds) + 1) B`` inputs. The third argument is
    ignored, so the result plugs into any sampler in place of ``net``."""
    if len(conds) != len(weights) or not conds:
        raise ValueError(f"compose needs one weight per condition, got {len(conds)} conditions and {len(weights)} weights")
    batched = cat_conditions([*conds, null_condition(conds[0])])
    k = len(conds) + 1

    def forward(x_t: Tensor, t: Tensor, _cond: object = None) -> Tensor:
        out = net(x_t.repeat(k, *([1] * (x_t.dim() - 1))), t.repeat(k), batched).chunk(k)
        uncond = out[-1]
        return uncond + sum(w * (o - uncond) for w, o in zip(weights, out[:-1]))

    return forward


def guided(net: Backbone, cond: Condition, scale: float) -> Callable[[Tensor, Tensor, object], Tensor]:
    """Classifier-free guidance: ``out(null) + scale (out(cond) - out(null))``; ``scale = 1`` returns ``net``
    with ``cond`` bound (one call per step, no null prediction)."""
    if scale == 1.0:
        return lambda x_t, t, _cond=None: net(x_t, t, cond)
    return compose(net, [cond], [scale])
