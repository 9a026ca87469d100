"""Image classifiers trained on real data: the judges of coherence (DESIGN §3) and, through their penultimate
layer, the in-domain feature extractor for Fréchet distances."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


class ImageClassifier(nn.Module):
    """A small conv net ``[B, C, H, W] -> logits [B, num_classes]``; ``features`` gives ``[B, feature_dim]``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 28, feature_dim: int = 128) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "feature_dim": feature_dim}
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
) -> ImageClassifier:
    """Train an :class:`ImageClassifier` on ``images [N, C, H, W]`` and integer ``labels [N]``; returns it in
    eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = ImageClassifier(num_classes, images.shape[1], images.shape[-1])
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    clf.train()
    bar = tqdm(total=steps, desc="classifier", disable=not progress, leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(clf(_augment(images[idx], generator)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    return clf.eval()


def predict(clf: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted classes ``[N]`` for ``images [N, C, H, W]``."""
    with torch.no_grad():
        return torch.cat([clf(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])
