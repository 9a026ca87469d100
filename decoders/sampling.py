"""Sampling settings: how diffusion and text decoders sample, passed to generation as a value.

Nothing here is model state. ``MultimodalVAE.generate(..., sampling=SamplingSettings(steps=200))`` hands the same
value to every decoder; each resolves it against its own defaults (:meth:`SamplingSettings.sampler_for`) and
describes what it did (``Decoder.describe_sampling``), which ``samples.npz`` and evaluation outputs record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args

from decoders.diffusion.samplers import SAMPLERS, Sampler, check_grid, check_start, check_steps


Unconditional = Literal["reestimate", "dropped", "sampled"]


def check_unconditional(mode: str | None) -> None:
    """One-line ``ValueError`` unless ``mode`` is ``None`` or an :data:`Unconditional` setting."""
    if mode is not None and mode not in get_args(Unconditional):
        raise ValueError(f"unknown unconditional {mode!r}; choose reestimate, dropped or sampled")


@dataclass(frozen=True)
class TextSampling:
    """How text decoders generate: ``greedy`` (the most likely token, the default), or ``sample`` with
    ``temperature``, from the ``top_k`` most likely tokens (0: all) and the nucleus of mass ``top_p``."""

    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample") or self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"text sampling needs strategy greedy|sample, temperature > 0, top_k >= 0 and 0 < top_p <= 1; "
                             f"got {self.strategy}, {self.temperature}, {self.top_k}, {self.top_p}")

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    """Args:
        sampler: a sampler name (``ddim``, ``dpmpp_2m``, ``ancestral``, ``euler_maruyama``: that sampler with its own defaults)
            or a :class:`~decoders.diffusion.Sampler` object; ``None`` keeps each decoder's default sampler.
        steps: override the chosen sampler's number of steps.
        eta: override DDIM's ``eta`` (0 deterministic, 1 ancestral).
        grid: override DPM-Solver++'s evaluation times: ``time`` (uniform in time, its default) or ``logsnr``.
        guidance: classifier-free guidance scale (1: none; 0: unconditional); anything but 1 needs decoders
            trained with condition dropout.
        start: the time in ``(0, 1]`` where the reverse process begins. 1 (the default) draws exact samples of the
            model. Below 1 the decoder's mean image, noised to ``start``, is refined (SDEdit / DiffuseVAE-style):
            more of the mean's content, less detail, and no longer a sample of ``p(x|z)``. Opt-in, and recorded.
        text: how text decoders generate (:class:`TextSampling`; greedy by default).
        unconditional: how MT-Diffusion decoders treat an aggregated modality that is not given — ``reestimate``,
            ``dropped`` or ``sampled`` (:class:`~decoders.MTDiffusionDecoder`'s setting of that name); ``None`` (the
            default) keeps each decoder's own. Other diffusion decoders refuse it. Recorded.
    """

    sampler: str | Sampler | None = None
    steps: int | None = None
    eta: float | None = None
    grid: str | None = None
    guidance: float = 1.0
    start: float = 1.0
    text: TextSampling = TextSampling()
    unconditional: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.sampler, str) and self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None:
            check_steps(self.steps)
        if self.eta is not None and self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if self.grid is not None:
            check_grid(self.grid)
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        check_start(self.start)
        check_unconditional(self.unconditional)

    @property
    def exact(self) -> bool:
        """Whether samples are draws of the model (``start == 1``), not refinements of a mean image."""
        return self.start >= 1.0

    def replace(self, **changes: Any) -> SamplingSettings:
        """A copy with ``changes`` applied (``None`` values are ignored: they mean "keep"); ``text`` may be a mapping
        of :class:`TextSampling` fields to change."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if isinstance(changes.get("text"), dict):
            changes["text"] = dataclasses.replace(self.text, **changes["text"])
        return dataclasses.replace(self, **changes)

    def sampler_for(self, default: Sampler) -> Sampler:
        """The sampler to use where ``default`` is a decoder's own: ``sampler`` (or the default), then the
        ``steps`` / ``eta`` / ``grid`` overrides. ``eta`` or ``grid`` on a sampler without it raises ``ValueError``."""
        if isinstance(self.sampler, Sampler):
            base = self.sampler
        elif isinstance(self.sampler, str) and self.sampler != default.name:
            base = SAMPLERS[self.sampler]()
        else:
            base = default
        changes: dict[str, Any] = {}
        if self.steps is not None:
            changes["steps"] = self.steps
        if self.eta is not None:
            if not base.has_eta:
                raise ValueError(f"eta applies to the ddim sampler, not {base.name}")
            changes["eta"] = self.eta
        if self.grid is not None:
            if not base.has_grid:
                raise ValueError(f"grid applies to the dpmpp_2m sampler, not {base.name}")
            changes["grid"] = self.grid
        return dataclasses.replace(base, **changes) if changes else base

    def record(self) -> dict[str, Any]:
        """The settings as JSON-able values (what ``samples.npz`` and ``metrics.json`` store)."""
        sampler = self.sampler.describe() if isinstance(self.sampler, Sampler) else self.sampler
        return {"sampler": sampler, "steps": self.steps, "eta": self.eta, "grid": self.grid, "guidance": self.guidance, "start": self.start,
                "exact": self.exact, "text": self.text.record(), "unconditional": self.unconditional}
