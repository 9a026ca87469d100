"""Convolutional image encoder (PolyMNIST-style, sized for 28, 32 and 64 pixel images)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from encoders.base import Encoder, group_norm


def conv_features(in_channels: int, image_size: int, channels: Sequence[int], hidden_dim: int, norm: bool = True) -> nn.Sequential:
    """Strided convolutions ``[B, C, H, W] -> [B, hidden_dim]``: one stride-2 stage per entry of ``channels``
    (each halves the size, rounding up), GroupNorm and SiLU, then a dense layer."""
    layers: list[nn.Module] = []
    size, c_in = image_size, in_channels
    for c_out in channels:
        layers += [nn.Conv2d(c_in, c_out, 4 if size % 2 == 0 else 3, stride=2, padding=1), group_norm(c_out, norm), nn.SiLU()]
        size, c_in = (size + 1) // 2, c_out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * size * size, hidden_dim), nn.SiLU())


class ConvImageEncoder(Encoder):
    """Strided conv stack ``[B, C, H, W] -> [B, F]`` then the Gaussian head.

    Args:
        latent_dim: size ``d`` of the shared latent.
        in_channels: image channels ``C``.
        image_size: ``H == W``; each stage halves it (rounding up).
        channels: output channels of each stride-2 stage.
        hidden_dim: width of the dense layer before the head.
        norm: GroupNorm after each conv (learned digit shape about twice as fast on PolyDigits).
    """

    def __init__(
        self,
        latent_dim: int,
        in_channels: int = 3,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64, 64),
        hidden_dim: int = 256,
        norm: bool = True,
    ) -> None:
        super().__init__(latent_dim, hidden_dim)
        self.image_size = image_size
        self.in_channels = in_channels
        self.net = conv_features(in_channels, image_size, channels, hidden_dim, norm)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"ConvImageEncoder expects [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {list(x.shape)}"
            )
        return self.net(x)
