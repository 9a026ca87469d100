"""Unite-and-Conquer: sampling from several conditions at once by composing conditional diffusion predictions
(Nair et al. 2023 eq. 8, 10, 18).

Each *expert* is one trained model's diffusion backbone with the conditions it was given (its *sources*), one
weight ``beta_i`` per source and the model's reliability ``a_j`` (the reliabilities sum to 1). The composed
prediction is

    out = sum_j a_j out_j(null) + sum_i beta_i (out(c_i) - sum_j a_j out_j(null))
        = sum_i beta_i out(c_i) + (1 - sum_i beta_i) sum_j a_j out_j(null),

with ``out_j(null)`` model ``j``'s own unconditional prediction (condition dropout). The paper's eq. 8 / 18 print
the inner sum from ``j = i``; the sum over every ``j`` (as Nair et al. 2023 write it) is the one whose coefficients add up to 1.
One source with ``beta = w`` is classifier-free guidance; ``beta_i = w_i`` is eq. 10.

Because the coefficients sum to 1, the combination is affine, and eps, v and x0 are affine in each other with the
same coefficients at a given ``(x_t, t)``: composing noise predictions (the paper) and composing clean estimates
(done here) give the same sampler step, and models with different prediction types compose. Every prediction is
for the whole image ``x`` (a residual decoder re-expresses its output for ``x``; each source has its own mean), so
the rule holds for ``x`` itself. Each expert runs one batched network call per step (its sources and, when its
coefficient is not zero, its null), and the result is a :data:`~decoders.diffusion.Denoiser` that every sampler
of the library takes (DDIM, ancestral, Euler-Maruyama).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from decoders.diffusion.parameterization import Backbone, Denoiser, to_x0
from decoders.diffusion.processes import DiffusionProcess
from decoders.guidance import cat_conditions, null_condition
from decoders.sampling import SamplingSettings
from decoders.unet import Condition

RELIABILITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Expert:
    """One model's part of a composition.

    Attributes:
        net: the backbone ``net(x_t, t, cond)``, a prediction (of ``process.prediction``) for the whole image.
        process: the model's diffusion process (schedule, prediction type, training grid, default sampler).
        conds: one condition per source, each ``[B]`` examples.
        weights: ``beta_i`` per source.
        reliability: ``a_j``, how far this model's unconditional prediction is trusted.
        null: the model's null condition (default: ``conds[0]`` with every example dropped).
        anchors: per source, the point its prior at ``t = 1`` is centred on (a residual decoder's mean), or ``None``.
        can_drop: whether the model was trained with condition dropout (its null prediction means something).
        name: for messages.
    """

    net: Backbone
    process: DiffusionProcess
    conds: Sequence[Condition]
    weights: Sequence[float]
    reliability: float = 1.0
    null: Condition | None = None
    anchors: Sequence[Tensor | None] = ()
    can_drop: bool = True
    name: str = "model"
    null_cond: Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.conds or len(self.conds) != len(self.weights):
            raise ValueError(f"{self.name}: a composition needs one weight per source, got {len(self.conds)} sources and "
                             f"{len(self.weights)} weights")
        if self.anchors and len(self.anchors) != len(self.conds):
            raise ValueError(f"{self.name}: one anchor per source, got {len(self.anchors)} for {len(self.conds)} sources")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"{self.name}: weights must be finite, got {list(self.weights)}")
        if not 0.0 <= self.reliability <= 1.0:
            raise ValueError(f"{self.name}: reliability must be in [0, 1], got {self.reliability}")
        object.__setattr__(self, "null_cond", self.null if self.null is not None else null_condition(self.conds[0]))


def null_weights(reliabilities: Sequence[float], weights: Sequence[float]) -> list[float]:
    """``a_j (1 - sum_i beta_i)`` for every model ``j``: the coefficient of its null prediction, from the reliabilities
    and all sources' weights (what :func:`check_experts` and the command-line checks both need)."""
    total = sum(weights)
    return [a * (1.0 - total) for a in reliabilities]


def null_coefficients(experts: Sequence[Expert]) -> list[float]:
    """The coefficient of each expert's null prediction in the composition (:func:`null_weights`)."""
    return null_weights([e.reliability for e in experts], [w for e in experts for w in e.weights])


def check_experts(experts: Sequence[Expert]) -> None:
    """One-line ``ValueError`` unless the experts can be composed: reliabilities summing to 1, a null prediction
    wherever the rule uses one, and one forward process (schedule and training grid) for all of them."""
    if not experts:
        raise ValueError("a composition needs at least one model")
    total = sum(e.reliability for e in experts)
    if abs(total - 1.0) > RELIABILITY_TOLERANCE:
        raise ValueError(f"reliabilities must sum to 1, got {[e.reliability for e in experts]} (sum {total:g})")
    for e, coef in zip(experts, null_coefficients(experts)):
        if coef != 0.0 and not e.can_drop:
            raise ValueError(f"{e.name}: its decoder was trained without condition dropout (cond_dropout 0), so it has no "
                             "unconditional prediction; composing needs one unless the weights sum to 1")
    first = experts[0]
    grid = torch.linspace(0.0, 1.0, 65, dtype=torch.float64)
    reference = torch.stack(first.process.alpha_sigma(grid))
    for e in experts:
        if e.process.forward_process.has_offset:
            raise ValueError(f"{e.name}: {type(e.process.forward_process).__name__} has a forward offset; only plain "
                             "variance-preserving processes compose")
        if not torch.allclose(torch.stack(e.process.alpha_sigma(grid)).double(), reference.double(), atol=1e-6):
            raise ValueError(f"{e.name}: its noise schedule differs from {first.name}'s; composed models need one schedule")
        if e.process.timesteps != first.process.timesteps:
            raise ValueError(f"{e.name}: trained on {e.process.timesteps} timesteps, {first.name} on {first.process.timesteps}; "
                             "composed models need one time grid")


def composed_denoiser(experts: Sequence[Expert], clip: tuple[float, float] | None = None) -> Denoiser:
    """The composition as a denoiser ``(x_t, t) -> x0_hat`` (clamped to ``clip`` after composing)."""
    check_experts(experts)
    calls = []
    for e, null_coef in zip(experts, null_coefficients(experts)):
        conds, coefs = list(e.conds), [float(w) for w in e.weights]
        if null_coef != 0.0:
            conds.append(e.null_cond)
            coefs.append(null_coef)
        calls.append((e, cat_conditions(conds), coefs))

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = experts[0].process.alpha_sigma(t)
        x0 = torch.zeros_like(x_t)
        for e, batched, coefs in calls:
            k = len(coefs)
            rep = (k, *([1] * (x_t.dim() - 1)))
            out = e.net(x_t.repeat(rep), t.repeat(k), batched)
            parts = to_x0(e.process.prediction, out, x_t.repeat(rep), alpha.repeat(k), sigma.repeat(k)).chunk(k)
            for c, part in zip(coefs, parts):
                x0 = x0 + c * part.to(x0.dtype)
        if clip is not None:
            x0 = x0.clamp(*clip)
        return x0

    return denoise


def composed_anchor(experts: Sequence[Expert]) -> Tensor | None:
    """The same combination of the sources' anchors (null anchors are 0): where the composed prior is centred."""
    if not any(a is not None for e in experts for a in e.anchors):
        return None
    out = None
    for e in experts:
        for w, a in zip(e.weights, e.anchors):
            if a is not None:
                out = w * a if out is None else out + w * a
    return out


def sample_composed(
    experts: Sequence[Expert],
    shape: tuple[int, ...],
    *,
    sampling: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip: tuple[float, float] | None = (-1.0, 1.0),
) -> Tensor:
    """Samples ``shape`` (in the processes' ``[-1, 1]`` space) from the composition with the sampler ``sampling``
    resolves against the first expert's default. Composition draws exact samples (``start`` must be 1)."""
    if not sampling.exact:
        raise ValueError(f"a composition samples exactly (start 1); got start {sampling.start}")
    if sampling.guidance != 1.0:
        raise ValueError(f"guidance {sampling.guidance} with a composition: set the sources' weights instead")
    check_experts(experts)
    process = experts[0].process
    sampler = sampling.sampler_for(process.sampler)
    for e in experts:
        e.process.check_sampler(sampler)
    return process.sample(composed_denoiser(experts, clip), shape, sampler=sampler, generator=generator, device=device,
                          anchor=composed_anchor(experts), dtype=dtype)
