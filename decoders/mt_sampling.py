"""MT-Diffusion's sampling (Chen et al., "Diffusion Models for Multi-Modal Generative Modeling", Algorithm 1) as a
re-estimating denoiser for the library's samplers: the chain's state (:class:`ChainState`) and one step
(:class:`Algorithm1`), with classifier-free guidance over the decoder's null path."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from decoders.diffusion.forward import Marginal
from decoders.diffusion.parameterization import Reestimating, to_x0
from decoders.unet import Condition


@dataclass(frozen=True)
class ChainState(Mapping):
    """The forward condition of Algorithm 1's chain at one step: the encodings ``{modality: E_i}`` the aggregated
    marginal offsets by (this mapping), the ``current`` values of the conditioning modalities (given, or estimated),
    the heads' estimates of the last step, and the network's condition built from ``current`` (with the encodings, by
    one :meth:`~decoders.mt_diffusion.MTDiffusionDecoder.condition` call)."""

    enc: Mapping[str, Tensor]
    current: Mapping[str, Tensor]
    estimates: Mapping[str, Tensor]
    network: Condition

    def __getitem__(self, name: str) -> Tensor:
        return self.enc[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.enc)

    def __len__(self) -> int:
        return len(self.enc)


@dataclass(frozen=True)
class Algorithm1(Reestimating):
    """The denoiser of Algorithm 1: the network reads the current values; every conditioning modality not in ``fixed``
    takes its head's new estimate, and the chain continues on the marginal of the new encodings (a new
    :class:`ChainState`; nothing changes in place).

    Heads of aggregated modalities are read from a second pass with those modalities hidden (their offsets removed
    from ``z_t``, their direct inputs zero), the view they were trained on. With ``guidance`` ``w != 1`` the prediction is
    ``pred_null + w (pred - pred_null)``, where ``pred_null`` is the null path's (every aggregated modality dropped) on
    ``y_t = z_t - c_t``: in ``y`` both passes predict the same chain (eq. 4 without the offset), so the combination is
    classifier-free guidance on the image's own diffusion."""

    decoder: Any  # the MTDiffusionDecoder (not imported here: that module imports this one)
    z: Tensor | None
    fixed: frozenset[str]
    guidance: float = 1.0

    def step(self, z_t: Tensor, t: Tensor, marginal: Marginal) -> tuple[Tensor, Marginal]:
        dec, state = self.decoder, marginal.cond
        batch, device = z_t.shape[0], z_t.device
        out, heads = dec.network(z_t, t, state.network)
        y_t = marginal.remove_offset(z_t, t)  # z_t carries the offset of the values it was drawn with, not the new ones'
        if dec.leaky - self.fixed:  # a re-estimated modality a head predicts: its head from the hidden view
            cond, enc = dec.condition(self.z, dec.hide_leaky(state.current), batch, device)
            _, hidden = dec.network(dec.forward_process.given(enc).add_offset(y_t, t), t, cond)
            heads = {**heads, **{m: hidden[m] for m in dec.leaky}}
        if self.guidance != 1.0:
            null, _ = dec.network(y_t, t, dec.condition(self.z, dec.null_values(state.current), batch, device)[0])
            out = null + self.guidance * (out - null)
        estimates = {m: dec.estimate(m, h) for m, h in heads.items()}
        values = {m: estimates[m] if m in estimates and m not in self.fixed else v for m, v in state.current.items()}
        cond, enc = dec.condition(self.z, values, batch, device)
        following = dec.forward_process.given(ChainState(enc, values, estimates, cond))
        alpha, sigma = marginal.alpha_sigma(t)
        return to_x0(dec.prediction, out, y_t, alpha, sigma).clamp(-1, 1), following
