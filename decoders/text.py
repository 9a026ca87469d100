"""The text decoder of Wesego & Rooshenas 2024 §6.3 (Optimus-style): a causal transformers decoder of the GPT-2 family conditioned on
``z``, with ``-log p(text | z)`` summed over tokens (teacher forcing) as its ELBO term.

How ``z`` reaches the decoder (``inject``), after Optimus (Li et al. 2020, §3.2):

* ``embedding``: a projection of ``z`` added to every token's input embedding;
* ``prefix``: a projection of ``z`` as one extra token in front of the text, which every attention layer reads (a
  one-slot memory; Optimus injects its memory as per-layer keys and values, this feeds it through the input);
* ``both`` (default).

Generation follows the ``text`` field of the :class:`~decoders.SamplingSettings` it is passed: greedy, or sampled
(``temperature``, ``top_k``, nucleus ``top_p``) with a ``torch.Generator``, up to ``max_length`` tokens; it returns
the text batch layout of :mod:`diffmvae.data.text` (``[BOS] ... [EOS]`` then padding).
Built from a local pretrained directory or a config; never downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from decoders.base import Decoder, Observed, skipped
from decoders.sampling import SamplingSettings, TextSampling
from encoders.text import build_transformer, transformer_args

Inject = Literal["embedding", "prefix", "both"]


class TextDecoder(Decoder):
    """Args:
        latent_dim: size of ``z``.
        pretrained: a local directory holding a GPT-2-family model; or
        config: the ``transformers.GPT2Config`` fields of a model built from scratch.
        inject: ``embedding``, ``prefix`` or ``both`` (see the module).
        bos_id, eos_id, pad_id: the tokenizer's begin / end / padding ids (the data module's tokenizer).
        max_length: tokens per text, ``[BOS]`` and ``[EOS]`` included (the data set's).
        modalities: the text modality it generates (default: the one it is keyed by).
    """

    is_text = True

    def __init__(
        self,
        latent_dim: int,
        pretrained: str | None = None,
        config: Mapping[str, Any] | None = None,
        inject: Inject = "both",
        bos_id: int = 2,
        eos_id: int = 3,
        pad_id: int = 0,
        max_length: int = 24,
        modalities: Sequence[str] = (),
    ) -> None:
        super().__init__(modalities, latent_dim)
        if inject not in ("embedding", "prefix", "both"):
            raise ValueError(f"unknown inject {inject!r}; choose embedding, prefix or both")
        if max_length < 3:
            raise ValueError(f"TextDecoder needs max_length >= 3 ([BOS], a token, [EOS]); got {max_length}")
        if config is not None:  # the tokenizer's special ids, unless the config sets its own
            config = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, **dict(config)}
        self.gpt = build_transformer("gpt2", pretrained, config, "TextDecoder")
        width = self.gpt.config.n_embd
        self.inject = inject
        self.to_embedding = nn.Linear(latent_dim, width) if inject in ("embedding", "both") else None
        self.to_prefix = nn.Linear(latent_dim, width) if inject in ("prefix", "both") else None
        self.bos_id, self.eos_id, self.pad_id, self.max_length = bos_id, eos_id, pad_id, max_length
        self.vocab_size = self.gpt.config.vocab_size
        positions = self.gpt.config.n_positions
        if max_length + (self.to_prefix is not None) > positions:
            raise ValueError(f"max_length {max_length} (+1 prefix) exceeds the decoder's n_positions {positions}")

    def portable_args(self) -> dict[str, Any]:
        return transformer_args(self.gpt)

    def bound_terms(self) -> frozenset[str]:
        return frozenset({"nll"})

    def check_specs(self, specs: Mapping[str, Any]) -> None:
        for m in self.modalities:
            spec = specs.get(m)
            if spec is None or spec.kind != "text":
                raise ValueError(f"TextDecoder generates {m!r}, which is not a text modality of the data")
            if spec.shape[0] != self.max_length:
                raise ValueError(f"TextDecoder max_length {self.max_length} differs from the data's {spec.shape[0]} for {m!r}")
            if spec.num_classes and spec.num_classes > self.vocab_size:
                raise ValueError(f"the tokenizer of {m!r} has {spec.num_classes} tokens, the TextDecoder's vocab_size is {self.vocab_size}")

    # ------------------------------------------------------------------ the conditional language model
    def logits(self, z: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Next-token logits ``[B, L, V]`` for ``ids [B, L]`` given ``z`` (position ``i`` predicts token ``i + 1``)."""
        embeds = self.gpt.transformer.wte(ids)
        if self.to_embedding is not None:
            embeds = embeds + self.to_embedding(z)[:, None, :].to(embeds.dtype)
        if self.to_prefix is not None:
            embeds = torch.cat([self.to_prefix(z)[:, None, :].to(embeds.dtype), embeds], dim=1)
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        out = self.gpt(inputs_embeds=embeds, attention_mask=mask).logits
        return out[:, 1:] if self.to_prefix is not None else out

    def nll(self, z: Tensor, text: Mapping[str, Tensor]) -> Tensor:
        """``-log p(text | z)`` ``[B]``, summed over the real tokens after ``[BOS]`` (``[EOS]`` included)."""
        ids, mask = text["input_ids"], text["attention_mask"]
        logits = self.logits(z, ids[:, :-1], mask[:, :-1]).float()
        target, keep = ids[:, 1:], mask[:, 1:].to(logits.dtype)
        token = nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        return (token * keep).sum(1)

    def loss(self, z: Tensor, example: Observed, *, generator=None, skip=frozenset()) -> dict[str, Tensor]:
        return {f"{m}/nll": self.nll(z, example[m]) for m in self.modalities if m in example and not skipped("nll", skip)}

    # ------------------------------------------------------------------ generation
    @staticmethod
    def next_token(logits: Tensor, how: TextSampling, generator: torch.Generator | None) -> Tensor:
        if how.strategy == "greedy":
            return logits.argmax(-1)
        logits = logits.float() / how.temperature
        if how.top_k:
            kth = logits.topk(min(how.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if how.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            mass = sorted_logits.softmax(-1).cumsum(-1)
            drop = mass - sorted_logits.softmax(-1) >= how.top_p  # keep the smallest prefix reaching top_p
            logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
        return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]

    def generate(self, z: Tensor, given: Observed, *, targets: Sequence[str], sampling: SamplingSettings = SamplingSettings(),
                 generator: torch.Generator | None = None) -> dict[str, dict[str, Tensor]]:
        """Texts ``{"input_ids", "attention_mask"}`` ``[B, max_length]`` given ``z`` (one text per target), generated
        as ``sampling.text`` says."""
        out = {}
        for m in targets:
            batch = z.shape[0]
            ids = torch.full((batch, self.max_length), self.pad_id, dtype=torch.long, device=z.device)
            mask = torch.zeros_like(ids)
            ids[:, 0], mask[:, 0] = self.bos_id, 1
            done = torch.zeros(batch, dtype=torch.bool, device=z.device)
            for i in range(1, self.max_length):
                token = self.next_token(self.logits(z, ids[:, :i], mask[:, :i])[:, -1], sampling.text, generator)
                token = torch.where(done, torch.full_like(token, self.pad_id), token)
                if i == self.max_length - 1:
                    token = torch.where(done, token, torch.full_like(token, self.eos_id))  # the length limit ends every text
                ids[:, i], mask[:, i] = token, (~done).long()
                done = done | (token == self.eos_id)
                if bool(done.all()):
                    break
            out[m] = {"input_ids": ids, "attention_mask": mask}
        return out
