"""The text expert of Wesego & Rooshenas 2024 §6.3 (Optimus-style): a transformers encoder of the BERT family whose pooled output
gives ``(mu, logvar)``. Built from a local pretrained directory (``pretrained: PATH``) or from a config (sizes in
YAML: ``config: {hidden_size: 64, num_hidden_layers: 2, ...}``); never downloaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from encoders.base import Encoder

Pooling = Literal["cls", "mean"]


def check_local_dir(path: str | Path, what: str) -> Path:
    """``path`` as a local directory, or one line saying a local path is needed (nothing is downloaded)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{what} {str(path)!r} is not a local directory; diffmvae never downloads: save the pretrained "
                         "files (save_pretrained) and pass that folder")
    return folder


def transformer_args(network: Any) -> dict[str, Any]:
    """``{"pretrained": None, "config": ...}``: the init arguments that rebuild a network loaded from a pretrained
    folder from its sizes alone (its weights are in the model's state dict), so a model folder needs no other path."""
    config = {k: v for k, v in network.config.to_diff_dict().items() if not k.startswith("_") and k not in ("transformers_version", "architectures")}
    return {"pretrained": None, "config": config}


def build_transformer(kind: str, pretrained: str | None, config: Mapping[str, Any] | None, what: str) -> Any:
    """A transformers model of ``kind`` (``bert`` / ``gpt2``) from a local directory, or built from ``config``."""
    if (pretrained is None) == (config is None):
        raise ValueError(f"{what} needs exactly one of pretrained (a local directory) or config (its sizes)")
    if kind == "bert":
        from transformers import BertConfig as Config  # heavy: transformers (~2 s to import) only when a text modality is built
        from transformers import BertModel as Model  # heavy: transformers (~2 s to import) only when a text modality is built
    else:
        from transformers import GPT2Config as Config  # heavy: transformers (~2 s to import) only when a text modality is built
        from transformers import GPT2LMHeadModel as Model  # heavy: transformers (~2 s to import) only when a text modality is built
    if pretrained is not None:
        folder = check_local_dir(pretrained, f"{what} pretrained")
        return Model.from_pretrained(str(folder), local_files_only=True)
    try:
        return Model(Config(**dict(config)))
    except TypeError as err:
        raise ValueError(f"{what} config: {err}") from None


class TextEncoder(Encoder):
    """Args:
        latent_dim: size of ``z`` (768 in the paper's CUB setting).
        pretrained: a local directory holding a BERT-family model (``save_pretrained``); or
        config: the ``transformers.BertConfig`` fields of a model built from scratch (``vocab_size`` must cover the
            tokenizer's).
        pooling: ``cls`` (the first token's state, BERT's pooler input) or ``mean`` (masked mean of the states).
    """

    def __init__(self, latent_dim: int, pretrained: str | None = None, config: Mapping[str, Any] | None = None,
                 pooling: Pooling = "cls") -> None:
        bert = build_transformer("bert", pretrained, config, "TextEncoder")
        super().__init__(latent_dim, bert.config.hidden_size)
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; choose cls or mean")
        self.bert, self.pooling = bert, pooling
        self.vocab_size = bert.config.vocab_size

    def portable_args(self) -> dict[str, Any]:
        return transformer_args(self.bert)

    def features(self, x: Mapping[str, Tensor]) -> Tensor:
        """Pooled states of the text's ``encoder_input_ids`` when the data has a separate encoder tokenization (BERT's
        vocabulary beside GPT-2's), else of its ``input_ids``; padded positions are masked out."""
        prefix = "encoder_" if "encoder_input_ids" in x else ""
        ids, mask = x[f"{prefix}input_ids"], x[f"{prefix}attention_mask"]
        states = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.to(states.dtype)[..., None]
        return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, x: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if not isinstance(x, Mapping) or "input_ids" not in x:
            raise ValueError("TextEncoder reads a text modality: a dict with input_ids and attention_mask")
        return super().forward(x)
