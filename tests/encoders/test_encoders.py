import pytest
import torch

from encoders import ConvImageEncoder, MLPEncoder
from encoders.base import LOGVAR_RANGE


@pytest.mark.parametrize("size", [28, 32, 64])
def test_conv_encoder_shapes(size):
    enc = ConvImageEncoder(5, image_size=size, channels=(4, 8, 8), hidden_dim=16)
    mu, logvar = enc(torch.rand(3, 3, size, size))
    assert mu.shape == logvar.shape == (3, 5)
    assert logvar.min() >= LOGVAR_RANGE[0] and logvar.max() <= LOGVAR_RANGE[1]


def test_conv_encoder_names_wrong_shape():
    with pytest.raises(ValueError, match=r"expects \[B, 3, 28, 28\], got \[2, 1, 28, 28\]"):
        ConvImageEncoder(4)(torch.rand(2, 1, 28, 28))


def test_mlp_encoder_labels_and_vectors():
    mu, _ = MLPEncoder(3, num_classes=10)(torch.tensor([1, 2]))
    assert mu.shape == (2, 3)
    mu, _ = MLPEncoder(3, input_dim=7)(torch.rand(4, 7))
    assert mu.shape == (4, 3)
    with pytest.raises(ValueError, match="exactly one of input_dim"):
        MLPEncoder(3)


def test_logvar_is_clamped():
    enc = MLPEncoder(2, input_dim=1, hidden=())
    with torch.no_grad():
        enc.head.bias.fill_(1e4)
    _, logvar = enc(torch.zeros(1, 1))
    assert logvar.max().item() == LOGVAR_RANGE[1]


@pytest.mark.parametrize("channels", [4, 12, 20, 64])
def test_group_norm_accepts_any_channel_count(channels):
    from encoders.base import group_norm

    norm = group_norm(channels)
    assert channels % norm.num_groups == 0
    assert norm(torch.randn(2, channels, 3, 3)).shape == (2, channels, 3, 3)
