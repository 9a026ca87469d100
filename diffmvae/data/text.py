"""Text as a modality: tokenizers (a local pretrained tokenizer directory, or one trained in memory on the training
captions with the ``tokenizers`` library), and the batch layout of a text modality.

A text example is ``{"input_ids": [L] long, "attention_mask": [L] long}``: ``[BOS] tokens [EOS]`` padded with
``[PAD]`` to the data set's ``max_length`` (longer captions are cut, keeping ``[EOS]``), so the default collation
stacks them into ``[B, L]`` tensors. Nothing is ever downloaded: a name that is not a local directory is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffmvae.data.spec import ModalitySpec
from diffmvae.io import DiffMVAEError
from encoders.text import check_local_dir

log = logging.getLogger(__name__)

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


@dataclass
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the ids the text modules need."""

    tokenizer: object  # tokenizers.Tokenizer
    pad_id: int
    bos_id: int
    eos_id: int

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}`` ``[N, max_length]``: ``[BOS] tokens [EOS]`` then padding."""
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([BOS], a token, [EOS]), got {max_length}")
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, encoding in enumerate(self.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            tokens = [self.bos_id, *encoding.ids[: max_length - 2], self.eos_id]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Tensor) -> list[str]:
        """Strings of ``[N, L]`` ids: the tokens after ``[BOS]`` up to the first ``[EOS]`` (or the end)."""
        out = []
        for row in ids.tolist():
            row = row[1:] if row and row[0] == self.bos_id else row
            row = row[: row.index(self.eos_id)] if self.eos_id in row else row
            out.append(self.tokenizer.decode([t for t in row if t != self.pad_id], skip_special_tokens=False))
        return out


def save_tokenizer(tokenizer: TextTokenizer, folder: str | Path) -> Path:
    """Write ``tokenizer`` to ``folder`` as a transformers fast tokenizer (``tokenizer.json`` with its begin, end and
    padding tokens named), which :func:`load_tokenizer` reads back with the same ids."""
    from transformers import PreTrainedTokenizerFast  # heavy: transformers (~2 s to import) only when a tokenizer is saved

    tok = tokenizer.tokenizer
    names = {key: tok.id_to_token(i) for key, i in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("pad_token", tokenizer.pad_id))}
    PreTrainedTokenizerFast(tokenizer_object=tok, **names).save_pretrained(str(folder))
    return Path(folder)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> TextTokenizer:
    """A word-level tokenizer trained in memory on ``texts`` (lower-cased, split on whitespace and punctuation), for
    data sets that ship none; deterministic for the same texts."""
    from tokenizers import (  # heavy: tokenizers only when a caption tokenizer is trained
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(sorted(set(texts)), trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS)))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    return TextTokenizer(tok, ids["[PAD]"], ids["[BOS]"], ids["[EOS]"])


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """The tokenizer saved in a local directory (``tokenizer.json``, or a transformers tokenizer such as BERT's
    ``vocab.txt``): ``[CLS]``/``[SEP]`` (BERT) or ``bos``/``eos`` (GPT-2) serve as begin and end, ``[PAD]`` or the end
    token as padding."""
    from transformers import AutoTokenizer  # heavy: transformers (~2 s to import) only when a text modality is built

    try:
        folder = check_local_dir(path, "tokenizer")
    except ValueError as err:
        raise DiffMVAEError(str(err)) from None
    try:
        hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DiffMVAEError(f"tokenizer {folder} could not be read: {str(err).splitlines()[0]}") from None
    if not getattr(hf, "is_fast", False):
        raise DiffMVAEError(f"tokenizer {folder} has no fast (tokenizers) version; save it with a tokenizer.json")
    bos = hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id
    eos = hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id
    pad = hf.pad_token_id if hf.pad_token_id is not None else eos
    if bos is None or eos is None:
        raise DiffMVAEError(f"tokenizer {folder} has neither [CLS]/[SEP] nor bos/eos tokens")
    return TextTokenizer(hf.backend_tokenizer, pad, bos, eos)


def encode_texts(texts: Sequence[str], tokenizer: TextTokenizer, max_length: int,
                 encoder_tokenizer: TextTokenizer | None = None) -> dict[str, Tensor]:
    """A text modality's tensors: ``input_ids`` / ``attention_mask`` by ``tokenizer`` (what the decoder models), and
    with a second ``encoder_tokenizer`` (Optimus: BERT's vocabulary for the encoder, GPT-2's for the decoder) also
    ``encoder_input_ids`` / ``encoder_attention_mask``, which :class:`~encoders.TextEncoder` reads when present."""
    out = tokenizer.encode(texts, max_length)
    if encoder_tokenizer is not None:
        enc = encoder_tokenizer.encode(texts, max_length)
        out.update(encoder_input_ids=enc["input_ids"], encoder_attention_mask=enc["attention_mask"])
    return out


class TextModality:
    """A data set's text modality: its tokenizer (a local folder, or a word-level one trained in memory on
    ``training_texts()`` the first time it is needed, ``vocab_size`` at most), an optional second tokenizer for the
    encoder (Optimus: BERT's vocabulary for the encoder, GPT-2's for the decoder), its spec, encoding and decoding."""

    def __init__(self, max_length: int, training_texts: Callable[[], Sequence[str]], tokenizer: str | None = None,
                 encoder_tokenizer: str | None = None, vocab_size: int = 1000) -> None:
        self.max_length, self.vocab_size, self._source, self._training_texts = max_length, vocab_size, tokenizer, training_texts
        self._tokenizer: TextTokenizer | None = None
        self.encoder_tokenizer = load_tokenizer(encoder_tokenizer) if encoder_tokenizer else None

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._source) if self._source else train_tokenizer(self._training_texts(), self.vocab_size)
        return self._tokenizer

    def spec(self) -> Any:
        """The modality's :class:`~diffmvae.data.spec.ModalitySpec` (``encoder_*`` tensors too with an encoder tokenizer)."""

        keys = ("input_ids", "attention_mask", *(("encoder_input_ids", "encoder_attention_mask") if self.encoder_tokenizer else ()))
        return ModalitySpec("text", (self.max_length,), num_classes=self.tokenizer.vocab_size, text_keys=keys)

    def save(self, folder: Path, name: str) -> dict[str, str]:
        """Save the tokenizer (and the encoder's) under ``folder`` as ``name`` (``name``-encoder); returns the data
        module's init arguments that read them back, as paths relative to ``folder``."""
        out = {"tokenizer": str(save_tokenizer(self.tokenizer, folder / name).relative_to(folder))}
        if self.encoder_tokenizer is not None:
            out["encoder_tokenizer"] = str(save_tokenizer(self.encoder_tokenizer, folder / f"{name}-encoder").relative_to(folder))
        return out

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return encode_texts(texts, self.tokenizer, self.max_length, self.encoder_tokenizer)

    def decode(self, ids: Tensor) -> list[str]:
        return self.tokenizer.decode(ids)
