"""Image classifiers trained on real data: the judges of coherence and, through their penultimate
layer, the in-domain feature extractor for Fréchet distances."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from diffmvae.data.batches import collate_split, map_batch
from diffmvae.data.captions import parse_digit
from diffmvae.io import DiffMVAEError, atomic_write, load_tensors, torch_save

log = logging.getLogger(__name__)


class Judge(nn.Module):
    """Base class of the judges of ``diffmvae evaluate``: ``forward`` gives logits (or values) whose argmax, or whose
    sign for :attr:`multilabel` judges, is the label read from a sample. :attr:`has_features`: whether
    :meth:`features` gives the features a Fréchet distance is measured in."""

    multilabel: bool = False
    has_features: bool = False

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no features")


class ImageClassifier(Judge):
    """A small conv net ``[B, C, H, W] -> logits [B, num_classes]``; ``features`` gives ``[B, feature_dim]``.

    ``multilabel``: the outputs are independent binary attributes (CelebA-style) instead of one class.
    """

    has_features = True

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 28, feature_dim: int = 128, multilabel: bool = False) -> None:
        super().__init__()
        self.multilabel = multilabel
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "feature_dim": feature_dim, "multilabel": multilabel}
        size = image_size
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (32, 64, 64):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in, size = c_out, (size + 1) // 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in * size * size, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer features ``[B, feature_dim]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ValueJudge(Judge):
    """The judge of a modality that is itself the label (a ``label`` modality, spec ``judge: value``): its "logits"
    are the one-hot value, so :func:`predict` returns the value."""

    multilabel = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return F.one_hot(x.long(), self.num_classes).float()


class AttributeJudge(Judge):
    """The judge of an ``attributes`` modality (0/1 vector, spec ``judge: value``): it is itself the label, so its
    "logits" are ``x - 1/2`` and :func:`predict` thresholds a generated probability at one half (as SBM-AE does)."""

    multilabel = True

    def forward(self, x: Tensor) -> Tensor:
        return x - 0.5


class TextClassifier(Judge):
    """The judge of a text modality: a bag of token embeddings (masked mean) and an MLP, ``{input_ids,
    attention_mask} [B, L] -> logits [B, num_classes]``, trained on the real captions."""

    multilabel = False

    def __init__(self, vocab_size: int, num_classes: int = 10, dim: int = 64, kind: str = "text") -> None:
        super().__init__()
        self.config = {"kind": "text", "vocab_size": vocab_size, "num_classes": num_classes, "dim": dim}
        self.embed = nn.Embedding(vocab_size, dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_classes))

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        mask = x["attention_mask"].float()[..., None]
        ids = x["input_ids"].clamp(0, self.embed.num_embeddings - 1)  # a decoder's vocabulary may be larger than the tokenizer's
        bag = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(bag)


class ParserJudge(Judge):
    """The rule-based judge of a caption: the class ``parse`` reads from the decoded string (PolyDigits:
    :func:`diffmvae.data.captions.parse_digit`, the digit it names); a caption naming none gets the extra class
    ``num_classes`` (never a label)."""

    multilabel = False

    def __init__(self, decode: Any, parse: Any = None, num_classes: int = 10) -> None:
        super().__init__()
        if parse is None:
            parse = parse_digit
        self.decode, self.parse, self.num_classes = decode, parse, num_classes

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        digits = [self.parse(t) for t in self.decode(x["input_ids"])]
        index = torch.tensor([d if 0 <= d < self.num_classes else self.num_classes for d in digits])
        return F.one_hot(index, self.num_classes + 1).float()


def fit_text_classifier(texts: dict[str, Tensor], labels: Tensor, vocab_size: int, *, epochs: int = 15, batch_size: int = 128,
                        lr: float = 1e-2, seed: int = 0) -> TextClassifier:
    """Train a :class:`TextClassifier` on real token ids and labels; returns it in eval mode on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    clf = TextClassifier(vocab_size, int(labels.max()) + 1)  # initialised from the global stream, as every judge (the CLI seeds it)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    clf.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(clf({k: v[idx] for k, v in texts.items()}), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clf.eval()


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts of up to 2 pixels (the classifier must not rely on exact placement)."""
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def fit_classifier(
    images: Tensor,
    labels: Tensor,
    *,
    num_classes: int = 10,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> ImageClassifier:
    """Train an :class:`ImageClassifier` on ``images [N, C, H, W]`` and integer ``labels [N]`` (cross-entropy), or
    0/1 attribute ``labels [N, A]`` (a multi-label classifier, binary cross-entropy); returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    multilabel = labels.dim() == 2
    clf = ImageClassifier(labels.shape[1] if multilabel else num_classes, images.shape[1], images.shape[-1], multilabel=multilabel).to(device)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    clf.train()
    bar = tqdm(total=steps, desc="classifier", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            target = labels[idx].to(device)
            logits = clf(_augment(images[idx].to(device), generator))
            if multilabel:
                loss = F.binary_cross_entropy_with_logits(logits, target.float())
            else:
                loss = F.cross_entropy(logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return clf.cpu().eval()  # judges run on the CPU beside the samples they read


def predict(clf: nn.Module, images: Tensor | dict[str, Tensor], batch_size: int = 512) -> Tensor:
    """Predicted classes ``[N]`` for ``images [N, C, H, W]`` (or a text batch), or 0/1 attributes ``[N, A]`` for a
    multi-label classifier; compare with labels by ``==`` either way."""

    multilabel = clf.multilabel
    n = len(next(iter(images.values())) if isinstance(images, dict) else images)
    with torch.no_grad():
        logits = torch.cat([clf(map_batch(images, lambda v, i=i: v[i : i + batch_size])) for i in range(0, n, batch_size)])
    return (logits > 0).long() if multilabel else logits.argmax(-1)


# ---------------------------------------------------------------------------------------------- classifier sets
CLASSIFIERS_FORMAT = "diffmvae-classifiers"


def fit_classifier_set(
    datamodule: Any, *, label_key: str | None = None, epochs: int = 15, batch_size: int = 128, lr: float = 2e-3, seed: int = 0, progress: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, ImageClassifier], dict[str, float]]:
    """One classifier per image modality judged by a classifier (its spec's ``judge``) on the train split of
    ``datamodule`` (labels: its ``label_key`` field, a class or a 0/1 attribute vector); returns them with their test
    accuracy ``{modality: acc}`` (per attribute for attribute labels)."""
    label_key = label_key or getattr(datamodule, "label_key", "label")
    train, test = collate_split(datamodule.dataset("train")), collate_split(datamodule.dataset("test"))
    if label_key not in train:
        raise DiffMVAEError(f"the data has no {label_key!r} field to train classifiers on")
    out, acc = {}, {}
    for m, spec in datamodule.specs.items():
        if spec.judge == "classifier" and spec.is_text:
            out[m] = fit_text_classifier(train[m], train[label_key], spec.num_classes, epochs=epochs, batch_size=batch_size, seed=seed)
            acc[m] = (predict(out[m], test[m]) == test[label_key]).float().mean().item()
            log.info("text classifier %s: test accuracy %.3f", m, acc[m])
            continue
        if spec.judge != "classifier" or not spec.is_image:
            continue
        labels = train[label_key]
        num_classes = labels.shape[1] if labels.dim() == 2 else int(labels.max()) + 1
        out[m] = fit_classifier(train[m], labels, num_classes=num_classes, epochs=epochs,
                                batch_size=batch_size, lr=lr, seed=seed, progress=progress, device=device)
        acc[m] = (predict(out[m], test[m]) == test[label_key]).float().mean().item()
        log.info("classifier %s: test accuracy %.3f", m, acc[m])
    return out, acc


def save_classifier_set(path: str | Path, classifiers: dict[str, ImageClassifier], accuracy: dict[str, float], data: dict[str, Any]) -> Path:
    payload = {
        "format": CLASSIFIERS_FORMAT,
        "data": data,
        "accuracy": accuracy,
        "classifiers": {m: {"config": c.config, "state_dict": c.state_dict()} for m, c in classifiers.items()},
    }
    return atomic_write(path, lambda tmp: torch_save(payload, tmp))


def load_classifier_set(path: str | Path) -> tuple[dict[str, ImageClassifier], dict[str, float], dict[str, Any]]:
    """``(classifiers, test accuracy, data config)`` from a file written by :func:`save_classifier_set`."""
    path = Path(path)
    raw = load_tensors(path, "classifier file", missing_hint="; train one with `diffmvae classifiers fit`")
    if not isinstance(raw, dict) or raw.get("format") != CLASSIFIERS_FORMAT:
        raise DiffMVAEError(f"{path} is not a classifier file written by `diffmvae classifiers fit`")
    out = {}
    for m, entry in raw["classifiers"].items():
        clf = TextClassifier(**entry["config"]) if entry["config"].get("kind") == "text" else ImageClassifier(**entry["config"])
        clf.load_state_dict(entry["state_dict"])
        out[m] = clf.eval()
    return out, dict(raw["accuracy"]), dict(raw["data"])
