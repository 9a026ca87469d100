import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from decoders import ConvImageDecoder, MLPDecoder  # noqa: E402
from diffmvae.model.vae import MultimodalVAE
from encoders import ConvImageEncoder, MLPEncoder  # noqa: E402

LATENT = 4


def tiny_image_vae(num_modalities: int = 3, subsets: str = "mopoe", latent_dim: int = LATENT) -> MultimodalVAE:
    """Image modalities m0.. of shape [3, 8, 8] with tiny conv encoders/decoders."""
    names = [f"m{k}" for k in range(num_modalities)]
    enc = {m: ConvImageEncoder(latent_dim, image_size=8, channels=(4, 4), hidden_dim=8) for m in names}
    dec = {m: ConvImageDecoder(latent_dim, image_size=8, channels=(4,), hidden_dim=8) for m in names}
    return MultimodalVAE(enc, dec, latent_dim, subsets)


@pytest.fixture
def image_vae() -> MultimodalVAE:
    torch.manual_seed(0)
    return tiny_image_vae()


@pytest.fixture
def mixed_vae() -> MultimodalVAE:
    """An image modality and a label modality."""
    torch.manual_seed(0)
    enc = {"img": ConvImageEncoder(LATENT, image_size=8, channels=(4, 4), hidden_dim=8), "label": MLPEncoder(LATENT, num_classes=10, hidden=(8,))}
    dec = {"img": ConvImageDecoder(LATENT, image_size=8, channels=(4,), hidden_dim=8), "label": MLPDecoder(LATENT, 10, hidden=(8,))}
    return MultimodalVAE(enc, dec, LATENT)


def image_batch(num_modalities: int = 3, batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"m{k}": torch.rand(batch, 3, 8, 8, generator=g) for k in range(num_modalities)}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny run trained once through `diffmvae fit`: ``(config path, checkpoints/last.ckpt)``."""
    from tiny_run import TINY, write_config

    from diffmvae.commands.main import main

    tmp = tmp_path_factory.mktemp("fit")
    cfg, run = write_config(tmp, TINY)
    assert main(["fit", "--config", str(cfg)]) == 0
    return cfg, run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def classifier_file(tmp_path_factory):
    """Judge classifiers of the tiny run's data (one epoch), written by `diffmvae classifiers fit`."""
    import yaml
    from tiny_run import TINY

    from diffmvae.commands.main import main

    tmp = tmp_path_factory.mktemp("clf")
    cfg = tmp / "classifiers.yaml"
    cfg.write_text(yaml.safe_dump({"data": TINY["data"], "epochs": 1, "batch_size": 16}))
    assert main(["classifiers", "fit", "--config", str(cfg), "--out", str(tmp / "clf.pt")]) == 0
    return tmp / "clf.pt"
