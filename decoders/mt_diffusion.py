"""MT-Diffusion (Chen et al., "Diffusion Models for Multi-Modal Generative Modeling"): a joint diffusion over a main image modality whose forward process aggregates
the other modalities, with a shared UNet predicting the noise and modality heads predicting the other modalities.

* Process: the library's :class:`~decoders.diffusion.DDPMProcess` on the aggregated forward process of eq. 3-4
  (:class:`~decoders.diffusion.aggregation.AggregatedForward`, one weight schedule per modality): one diffusion
  stack, the same loss and samplers as every other diffusion decoder.
* Encoders ``E_i`` (Fig. 3), no trainable parameters (:class:`~decoders.mt_parts.Aggregate`): ``identity`` (an image
  in the diffusion space: a masked or a paired image), ``embedding`` / ``structured`` (a label through a fixed i.i.d. or
  smooth image-space pattern per class), ``unet`` (option 3: ``E(y) = U-Net(0, y, t = 0)`` under stop-gradient) and
  ``backbone`` (the label enters the UNet's embedding and adds no offset). Modalities listed in ``inputs`` are also
  read by the noise network directly (the -X variant: images as input channels, labels through the embedding; -U gives
  it ``z_t`` and ``t`` only). A head is never trained on an input holding its own target, neither directly nor in
  the offset (``head_view``).
* The jointly learned pure-generation path (§4.2): ``cond_dropout`` drops aggregated modalities in training, so the
  network is also the unconditional model; generation can go through it (``unconditional: dropped``) and guide with
  it (``SamplingSettings.guidance``).
* Reverse model: the library's UNet with :class:`Head` s reading its middle block (-M) or its output block (-E).
* Loss (eq. 6, Algorithm 2): the library's DDPM loss (the simple eps loss on the aggregated marginal, the network
  also returning its heads' outputs), summed over the main modality's dimensions, plus the heads' losses
  (cross-entropy for labels, ``||x - x_hat||^2 / 2`` summed over pixels for images), each weighted so that eq. 6's
  ``lambda`` (``head_weight``) applies per dimension, against the per-dimension eps loss the paper uses: ``lambda``
  times the number of main dimensions for a label's cross-entropy, ``lambda`` per pixel for an image head
  (:meth:`MTDiffusionDecoder.term_weights`).
* Inference (Algorithm 1): every conditioning modality that is not given starts random and is re-estimated from its
  head at every step (:class:`Algorithm1`, a re-estimating denoiser: each step returns the marginal the chain
  continues on, so the sampler carries the state); the step is the library's sampler on the aggregated marginal (``Ancestral(T)`` is Algorithm 1's
  DDPM step; ``DDIM(50)`` the fast deterministic one). The reverse process starts at the model's prior
  ``N(c_T(X_hat), I)`` (eq. 4 at ``t = T``; Algorithm 1 writes ``N(0, I)``, the same when the offset is zero).

The decoder serves the main modality and the modalities its heads predict; with ``latent_dim > 0`` it is also
conditioned on a VAE latent ``z`` (an image-side decoder of a Diff-MVAE); with ``latent_dim = 0`` it is a standalone
joint model (:class:`diffmvae.model.JointDiffusion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from decoders.base import Decoder, Observed, skipped
from decoders.diffusion.aggregation import AggregatedForward, PaperWeight, WeightSchedule
from decoders.diffusion.losses import sum_event
from decoders.diffusion.parameterization import Prediction, expand
from decoders.diffusion.processes import DDPMProcess
from decoders.diffusion.samplers import Ancestral, Sampler
from decoders.diffusion.schedules import Schedule, VPSchedule
from decoders.mt_parts import (VECTOR_KINDS, Aggregate, ClassifierHead, Head, HeadTimes, ImageHead, LabelEstimates, LabelHead,
                               check_null_path, check_settings, need_spec, signal_weights, structured_patterns)
from decoders.mt_sampling import Algorithm1, ChainState
from decoders.random import rand, randint, randn
from decoders.sampling import SamplingSettings, Unconditional
from decoders.unet import Condition, UNet2d

__all__ = ["Aggregate", "Algorithm1", "ChainState", "Head", "MTDiffusionDecoder"]


class MTDiffusionDecoder(Decoder):
    """Args:
        main: the main (image) modality ``z_0`` diffuses.
        latent_dim: size of the VAE latent ``z`` it is also conditioned on (0: none, a standalone joint model).
        image_size, image_channels: the main modality's shape.
        unet_channels, emb_dim, attention_levels, dropout: the shared UNet.
        aggregate: ``{modality: Aggregate}``, the modalities conditioning the diffusion and their encoders.
        inputs: modalities of ``aggregate`` the noise network also reads directly (the -X variant, ``eps(z_t, X, t)``):
            images as input channels, labels (of any encoder kind) through the UNet's embedding.
        heads: ``{modality: Head}``, the heads predicting other modalities from the backbone.
        timesteps, schedule, prediction: the discrete diffusion (DDPM's linear schedule, T = 1000, eps).
        sampler: the default sampler (``Ancestral(T)``: Algorithm 1); ``DDIM(50)`` is the fast one.
        head_weight: eq. 6's ``lambda`` (relative to the per-dimension eps loss).
        max_weight: the diffusion loss's cap on its weight of the clean image's error (``None``: off, as the paper
            trains; :class:`~decoders.diffusion.DDPMLoss`). The heads' terms are not capped.
        modalities: what it generates (default: the main modality and, for a standalone joint model, every head's
            modality; inside a VAE, where other decoders generate those, only the main one). Heads of modalities it
            does not generate are auxiliary (their terms are named ``<main>/head_<modality>``).
        seed: seed of the fixed ``embedding`` patterns.
        label_estimates: how Algorithm 1 re-estimates a label that is not given: ``hard`` (the head's most likely
            class, one-hot: the kind of value training shows the encoders; the default) or ``soft`` (its class
            probabilities, a mixture of the class patterns).
        cond_dropout: the jointly learned pure-generation path (§4.2, the "f" rows): in training each aggregated
            modality is dropped from an example with this probability (its offset zero, its direct inputs zero, its
            head's term off), so one network is the multi-task model and the unconditional one. Needed for guidance
            and for ``unconditional: dropped``.
        head_view: for an aggregated modality that also has a head: the share of examples from which it is hidden
            (no offset, no direct input). The head is trained on those only: elsewhere the offset or the direct input
            holds its own target, and it learns to read it there instead of the image. The others keep it.
        head_times: how a head's term is weighted over the training times: ``uniform`` (eq. 6, the default) or
            ``signal`` (by the image's share ``abar_t`` of ``z_t``, normalised to mean 1 over the grid: a departure
            from the paper that trains heads where the image can be read).
        read_time: the noise level, a fraction of ``T``, at which heads read a given image (``None``: the first level,
            ``1 / T``). A head trained alike at every time may read a little noise better than none (opt-in).
        unconditional: how generation treats an aggregated modality that is not given: ``reestimate`` (Algorithm 1:
            a random start re-estimated from its head at every step; the default) or ``dropped`` (the null path, zero
            offset; needs ``cond_dropout > 0``); heads' modalities are then read from the finished image; or
            ``sampled`` (ancestral sampling of the joint: a label that is not given is drawn uniformly over its
            classes and held fixed, the image generated given it, and the drawn label returned with the image; an
            image modality that is not given is re-estimated as in Algorithm 1). ``SamplingSettings.unconditional``
            overrides it for one call.
        c_in_from: weight schedules whose offsets set the input scaling ``c_in`` instead of this decoder's own, so a
            single-task baseline (no offset) sees its input scaled exactly as the MT-Diffusion model it is compared
            with (default: its own).
    """

    def __init__(
        self,
        main: str,
        latent_dim: int = 0,
        image_size: int = 28,
        image_channels: int = 3,
        unet_channels: Sequence[int] = (32, 64, 64),
        emb_dim: int = 128,
        attention_levels: Sequence[int] = (),
        dropout: float = 0.0,
        aggregate: Mapping[str, Aggregate] | None = None,
        inputs: Sequence[str] = (),
        heads: Mapping[str, Head] | None = None,
        timesteps: int = 1000,
        schedule: Schedule | None = None,
        prediction: Prediction = "eps",
        sampler: Sampler | None = None,
        head_weight: float = 0.1,
        modalities: Sequence[str] = (),
        seed: int = 0,
        label_estimates: LabelEstimates = "hard",
        cond_dropout: float = 0.0,
        head_view: float = 0.5,
        unconditional: Unconditional = "reestimate",
        c_in_from: Mapping[str, WeightSchedule] | None = None,
        head_times: HeadTimes = "uniform",
        max_weight: float | None = None,
        read_time: float | None = None,
    ) -> None:
        check_settings(label_estimates, cond_dropout, head_view, unconditional, head_times, read_time)
        self.head_times, self.read_time = head_times, read_time
        self.label_estimates, self.cond_dropout, self.head_view, self.unconditional = label_estimates, cond_dropout, head_view, unconditional
        self.aggregate, self.heads_spec = dict(aggregate or {}), dict(heads or {})
        super().__init__(modalities or ((main,) if latent_dim else (main, *self.heads_spec)), latent_dim)
        if main in self.aggregate or main in self.heads_spec:
            raise ValueError(f"the main modality {main!r} cannot also be aggregated or predicted by a head")
        unknown = [m for m in inputs if m not in self.aggregate]
        if unknown:
            raise ValueError(f"inputs names {unknown[0]!r}, which is not a modality of aggregate")
        if main not in self.modalities:
            raise ValueError(f"an MT-Diffusion decoder generates its main modality {main!r}; modalities is {list(self.modalities)}")
        self.main, self.head_weight = main, head_weight
        self.inputs = tuple(m for m in inputs if self.aggregate[m].kind == "identity")  # images: input channels
        self.shape = (image_channels, image_size, image_size)
        self.reads = tuple(m for m in (*self.aggregate, *self.heads_spec) if m not in self.modalities)
        offsets = {m: a.weight if a.weight is not None else PaperWeight() for m, a in self.aggregate.items() if a.kind != "backbone"}
        # The library's DDPM process on the aggregated forward process: its loss draws x_t from eq. 4's marginal and its
        # samplers step on it; Ancestral(T) is Algorithm 1's DDPM step.
        self.process = DDPMProcess(timesteps=timesteps, prediction=prediction, sampler=sampler if sampler is not None else Ancestral(steps=timesteps),
                                   forward=AggregatedForward(schedule if schedule is not None else VPSchedule(), timesteps, offsets),
                                   max_weight=max_weight)
        generator = torch.Generator().manual_seed(seed)
        for m, a in self.aggregate.items():
            if a.kind == "embedding":
                self.register_buffer(f"pattern_{m}", a.scale * torch.randn(a.num_classes, *self.shape, generator=generator))
            elif a.kind == "structured":
                self.register_buffer(f"pattern_{m}", a.scale * structured_patterns(a.num_classes, self.shape, generator))
        self.backbone_labels = [m for m, a in self.aggregate.items() if a.kind in VECTOR_KINDS or (m in inputs and a.kind != "identity")]
        # aggregated modalities a head predicts: the head is trained only where the modality is hidden from the input
        self.leaky = frozenset(m for m in self.aggregate if m in self.heads_spec)
        vector_dim = sum(self.aggregate[m].num_classes for m in self.backbone_labels)
        self.net = UNet2d(image_channels, latent_dim, image_channels * len(self.inputs), unet_channels, emb_dim, attention_levels, dropout,
                          vector_dim=vector_dim)
        width = {"mid": unet_channels[-1], "out": unet_channels[0]}
        self.head_nets = nn.ModuleDict({
            m: (ClassifierHead(2 * image_channels, h.num_classes) if h.position == "output" else LabelHead(width[h.position], h.num_classes))
            if h.kind == "label" else ImageHead(width[h.position], h.channels)
            for m, h in self.heads_spec.items()
        })
        # Input preconditioning (EDM's c_in): the offset grows with the weights (thousands for the paper's), so the
        # UNet sees z_t / sqrt(1 + (sum_i atilde_t^(i))^2); a deterministic function of t, it hides nothing.
        atilde = (self.forward_process if c_in_from is None else AggregatedForward(self.forward_process.schedule, timesteps, c_in_from)).atilde
        self.register_buffer("c_in", (1 + atilde.sum(0) ** 2).rsqrt().float(), persistent=False)

    @property
    def forward_process(self) -> AggregatedForward:
        return self.process.forward_process

    @property
    def sampler(self) -> Sampler:
        """The default sampler."""
        return self.process.sampler

    @property
    def timesteps(self) -> int:
        return self.process.timesteps

    @property
    def prediction(self) -> Prediction:
        return self.process.prediction

    # ------------------------------------------------------------------ encoders and conditions
    def term_weights(self) -> dict[str, float]:
        """Eq. 6's ``lambda`` per dimension of each head's modality, against the eps loss summed over the ``D`` main
        dimensions: a label head's cross-entropy (one number per example) gets ``lambda * D``; an image head's loss,
        already summed over its own ``D_i`` pixels, gets ``lambda * D / D_i`` (``lambda`` per pixel when the head's
        image has the main shape)."""
        dims = math.prod(self.shape)
        return {self.head_term(m): self.head_weight * dims / (dims if head.kind == "image" else 1) for m, head in self.heads_spec.items()}

    def head_term(self, name: str) -> str:
        return f"{name}/head" if name in self.modalities else f"{self.main}/head_{name}"

    def data_value(self, name: str, x: Tensor) -> Tensor:
        """A modality's batch as the decoder works with it: one-hot probabilities for labels, [-1, 1] for images."""
        a = self.aggregate.get(name)
        if a is not None and a.kind != "identity":
            return F.one_hot(x.long(), a.num_classes).to(torch.get_default_dtype())
        return 2 * x - 1

    def zero_value(self, name: str, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        a = self.aggregate[name]
        return torch.zeros(batch, *(self.shape if a.kind == "identity" else (a.num_classes,)), device=device, dtype=dtype)

    def random_value(self, name: str, batch: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Algorithm 1's random start of a modality that is not given: a random class, or a noise image."""
        a = self.aggregate[name]
        if a.kind != "identity":
            return F.one_hot(randint(a.num_classes, (batch,), generator, device), a.num_classes).to(dtype)
        return randn((batch, *self.shape), generator, device, dtype).clamp(-1, 1)

    def encode(self, name: str, value: Tensor) -> Tensor:
        """``E_i``: identity for images in [-1, 1]; the class patterns (fixed, or the UNet's for ``unet``) weighted by
        a label's probabilities."""
        a = self.aggregate[name]
        if a.kind == "identity":
            return value
        pattern = self.unet_patterns(name, value) if a.kind == "unet" else getattr(self, f"pattern_{name}")
        return torch.einsum("bk,kchw->bchw", value.to(pattern.dtype), pattern)

    def unet_patterns(self, name: str, like: Tensor) -> Tensor:
        """Option 3's class patterns ``[K, C, H, W]``: the UNet's output for a zero image at ``t = 0`` with one class
        of ``name`` as its label (every other condition zero), under stop-gradient, times the encoder's scale."""
        a, k = self.aggregate[name], self.aggregate[name].num_classes
        kw = {"device": like.device, "dtype": like.dtype}
        vector = torch.cat([torch.eye(k, **kw) if m == name else torch.zeros(k, self.aggregate[m].num_classes, **kw)
                            for m in self.backbone_labels], dim=1)
        cond = Condition(z=torch.zeros(k, self.latent_dim, **kw) if self.latent_dim else None, vector=vector,
                         image=torch.zeros(k, self.shape[0] * len(self.inputs), *self.shape[1:], **kw) if self.inputs else None)
        with torch.no_grad():
            return a.scale * self.net(torch.zeros(k, *self.shape, **kw), torch.zeros(k, **kw), cond).detach()

    def condition(self, z: Tensor | None, values: Mapping[str, Tensor], batch: int, device: torch.device,
                  direct: Mapping[str, Tensor] | None = None) -> tuple[Condition, dict[str, Tensor]]:
        """The UNet's condition and the forward condition ``{modality: E_i}`` from the current values (data or
        estimates); ``direct`` replaces the values the UNet reads directly (input channels, label vectors)."""
        direct = values if direct is None else direct
        enc = {m: self.encode(m, values[m]) for m in self.forward_process.names}
        image = torch.cat([direct[m] for m in self.inputs], dim=1) if self.inputs else None
        vector = torch.cat([direct[m] for m in self.backbone_labels], dim=1) if self.backbone_labels else None
        return Condition(z=z if self.latent_dim else None, image=image, vector=vector), enc

    def hide_leaky(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``values`` with head-predicted modalities zeroed — no offset, no direct input: the view their heads are
        trained and read on."""
        return {m: torch.zeros_like(v) if m in self.leaky else v for m, v in values.items()}

    def null_values(self, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The null path's values: every aggregated modality dropped (zero: no offset, no direct input)."""
        return {m: torch.zeros_like(v) for m, v in values.items()}

    def network(self, z_t: Tensor, t: Tensor, cond: Condition) -> tuple[Tensor, dict[str, Tensor]]:
        """The UNet's eps (or v / x0) prediction and the heads' outputs (logits for labels, images in [-1, 1])."""
        c_in = self.c_in[self.forward_process.index(t).to(self.c_in.device)].to(z_t.dtype)
        scaled = expand(c_in, z_t) * z_t
        out, feats = self.net(scaled, t, cond, features=True)
        if any(h.position == "output" for h in self.heads_spec.values()):
            feats = {**feats, "output": torch.cat([scaled, out], dim=1)}
        return out, {m: head(feats[self.heads_spec[m].position]) for m, head in self.head_nets.items()}

    # ------------------------------------------------------------------ loss (Algorithm 2, eq. 6)
    def loss(self, z: Tensor | None, example: Observed, *, generator: torch.Generator | None = None,
             skip: frozenset[str] = frozenset()) -> dict[str, Tensor]:
        if self.main not in example:
            return {}
        x0 = 2 * example[self.main] - 1
        batch, device = x0.shape[0], x0.device
        # the pure-generation path: each aggregated modality dropped from an example with probability cond_dropout
        dropped = {m: rand((batch,), generator, device) < self.cond_dropout for m in self.aggregate} if self.cond_dropout > 0 else {}
        hidden = rand((batch,), generator, device) < self.head_view if self.leaky else None
        values, head_rows = {}, {}
        for m in self.aggregate:  # the data where observed and kept, zero (no contribution) where missing or dropped
            value = self.data_value(m, example[m]).to(x0.dtype) if m in example else self.zero_value(m, batch, device, x0.dtype)
            keep = example.mask(m) & ~dropped[m] if m in dropped else example.mask(m)
            head_rows[m] = keep & hidden if m in self.leaky else keep
            keep = keep & ~hidden if m in self.leaky else keep
            values[m] = value * expand(keep.to(x0.dtype), value)
        cond, enc = self.condition(z, values, batch, device)
        # the library's DDPM loss on the aggregated marginal, its network returning the heads' outputs too
        times = []
        eps_loss, heads = self.process.diffusion_loss.with_extras(lambda z_t, t, c: times.append(t) or self.network(z_t, t, c), x0, cond,
                                                                  marginal=self.forward_process.given(enc), generator=generator)
        weight = signal_weights(self.forward_process, times[0]) if self.head_times == "signal" else None
        terms = {}
        if not skipped("diffusion", skip):
            terms[f"{self.main}/diffusion"] = eps_loss
        for m, pred in heads.items():
            if m not in example or skipped("head", skip):
                continue
            if self.heads_spec[m].kind == "label":
                nll = F.cross_entropy(pred, example[m].long(), reduction="none")
            else:
                nll = 0.5 * sum_event((pred - (2 * example[m] - 1)).pow(2))
            nll = nll if weight is None else nll * weight.to(nll.dtype)
            terms[self.head_term(m)] = torch.where(head_rows.get(m, example.mask(m)), nll, torch.zeros_like(nll))
        return terms

    def check_specs(self, specs: Mapping[str, Any]) -> None:
        """The main modality and identity-encoded ones are images of the main shape; labels have the classes the
        encoders and heads were built for."""
        need_spec(specs[self.main], self.main, "image", self.shape, what="main modality")
        for m, a in self.aggregate.items():
            need_spec(specs[m], m, "image", self.shape, what="identity encoder") if a.kind == "identity" else \
                need_spec(specs[m], m, "label", classes=a.num_classes, what=f"{a.kind} encoder")
        for m, h in self.heads_spec.items():
            need_spec(specs[m], m, "image", (h.channels, *self.shape[1:]), what="image head") if h.kind == "image" else \
                need_spec(specs[m], m, "label", classes=h.num_classes, what="label head")

    # ------------------------------------------------------------------ generation (Algorithm 1)
    def check_sampling(self, sampling: SamplingSettings) -> None:
        if sampling.guidance != 1.0 and self.cond_dropout <= 0:
            raise ValueError(f"guidance {sampling.guidance} needs an MT-Diffusion decoder trained with cond_dropout > 0; "
                             "without it there is no null condition to guide with")
        if not sampling.exact:
            raise ValueError(f"start {sampling.start} refines a mean image, and an MT-Diffusion decoder has none; use start 1")
        check_null_path(self.mode(sampling), self.cond_dropout)
        sampling.sampler_for(self.sampler).check(self.forward_process)

    def mode(self, sampling: SamplingSettings) -> str:
        """How this call treats aggregated modalities not given: the sampling's ``unconditional``, else the decoder's."""
        return sampling.unconditional or self.unconditional

    def describe_sampling(self, sampling: SamplingSettings) -> dict[str, Any]:
        return {**sampling.sampler_for(self.sampler).describe(), "guidance": sampling.guidance, "start": 1.0, "exact": True,
                "unconditional": self.mode(sampling)}

    def estimate(self, name: str, head_output: Tensor) -> Tensor:
        """A head's output as a value of its modality: a label's most likely class one-hot (``label_estimates:
        hard``) or its class probabilities (``soft``), or an image in [-1, 1]."""
        if self.heads_spec[name].kind != "label":
            return head_output
        if self.label_estimates == "soft":
            return head_output.softmax(-1)
        return F.one_hot(head_output.argmax(-1), head_output.shape[-1]).to(head_output.dtype)

    def generate(self, z: Tensor | None, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Algorithm 1: the main modality by the reverse process on the aggregated marginal; every conditioning
        modality not in ``given`` starts random and is re-estimated from its head at each step (given ones stay
        fixed). Heads' modalities come out as labels (argmax) or images in [0, 1]. With the main modality given,
        the other targets are read from the heads at the first noise level."""
        self.check_sampling(sampling)
        batch, device = given.batch_size, given.present.device
        dtype = torch.get_default_dtype() if z is None else z.dtype
        fixed = {m for m in self.aggregate if m in given and bool(given.mask(m).all())}
        values = {m: self.data_value(m, given[m]).to(dtype) if m in fixed else self.random_value(m, batch, generator, device, dtype)
                  for m in self.aggregate}
        mode = self.mode(sampling)
        drawn = {m for m in self.aggregate if m not in fixed and self.aggregate[m].kind != "identity"} if mode == "sampled" else set()
        fixed |= drawn  # ancestral sampling: the drawn labels (uniform one-hot, from random_value) condition like given ones
        if self.main in given:
            return self.outputs(targets, None, self.read(z, 2 * given[self.main] - 1, values, generator))
        null = mode == "dropped"
        chain_values = {m: v if m in fixed else torch.zeros_like(v) for m, v in values.items()} if null else values
        held = frozenset(self.aggregate) if null else frozenset(fixed)  # the null path drops what is not given, re-estimates nothing
        cond, enc = self.condition(z, chain_values, batch, device)
        start = self.forward_process.given(ChainState(enc, chain_values, {}, cond))
        x, end = sampling.sampler_for(self.sampler).run(Algorithm1(self, z, held, sampling.guidance), start, (batch, *self.shape),
                                                        timesteps=self.timesteps, generator=generator, device=device, dtype=dtype)
        if null and any(m != self.main for m in targets):
            return self.outputs(targets, x, self.read(z, x, chain_values, generator))  # heads' modalities hidden in read
        return self.outputs(targets, x, {**end.cond.estimates, **{m: values[m] for m in drawn}})

    def read(self, z: Tensor | None, x0: Tensor, values: Mapping[str, Tensor], generator: torch.Generator | None) -> dict[str, Tensor]:
        """The heads' estimates from an image ``x0`` in [-1, 1], noised to ``read_time`` (head-predicted modalities
        hidden, the view their heads were trained on)."""
        batch, device = x0.shape[0], x0.device
        t = torch.full((batch,), self.read_time or 1.0 / self.timesteps, device=device, dtype=x0.dtype)
        cond, enc = self.condition(z, self.hide_leaky(values), batch, device)
        z_t = self.forward_process.given(enc).sample(x0, t, randn(tuple(x0.shape), generator, device, x0.dtype))
        _, heads = self.network(z_t, t, cond)
        return {m: self.estimate(m, h) for m, h in heads.items()}

    def outputs(self, targets: Sequence[str], main: Tensor | None, estimates: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for m in targets:
            if m == self.main:
                out[m] = main.add(1).div(2).clamp(0, 1)
            elif self.heads_spec[m].kind == "label":
                out[m] = estimates[m].argmax(-1)
            else:
                out[m] = estimates[m].add(1).div(2).clamp(0, 1)
        return out
