"""A tiny PolyDigits run config for end-to-end CLI tests (3 modalities, 4-d latent, 4 steps)."""

import copy

import yaml

ENCODER = {"class_path": "encoders.ConvImageEncoder", "init_args": {"latent_dim": 4, "channels": [4, 4], "hidden_dim": 8}}
DECODER = {"class_path": "decoders.ConvImageDecoder", "init_args": {"latent_dim": 4, "channels": [4, 4], "hidden_dim": 8}}

TINY = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "max_steps": 4,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "class_path": "diffmvae.TrainingModule",
        "init_args": {
            "lr_schedule": "cosine",
            "warmup_steps": 2,
            "model": {
                "class_path": "diffmvae.MultimodalVAE",
                "init_args": {
                    "latent_dim": 4,
                    "encoders": {m: ENCODER for m in ("m0", "m1", "m2")},
                    "decoders": {m: DECODER for m in ("m0", "m1", "m2")},
                },
            },
        },
    },
    "data": {
        "class_path": "diffmvae.data.PolyDigitsDataModule",
        "init_args": {"num_modalities": 3, "batch_size": 8, "train_length": 16},
    },
}


def vae_args(cfg):
    """The ``init_args`` of the MultimodalVAE inside a run config (to edit encoders / decoders)."""
    return cfg["model"]["init_args"]["model"]["init_args"]


def copy_config(cfg=TINY):
    return copy.deepcopy(cfg)


def write_config(tmp_path, cfg, callbacks=()):
    """Write ``cfg`` with its run directory, CSV logger, the EMA and sample-grid callbacks, ``callbacks`` and a
    checkpoint callback under ``tmp_path``; returns ``(config path, run directory)``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    run = tmp_path / "run"
    cfg = {**cfg, "trainer": {**cfg["trainer"], "default_root_dir": str(run)}}
    cfg["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path), "name": "run", "version": ""},
    }
    cfg["trainer"]["callbacks"] = [
        {"class_path": "diffmvae.training.EMA", "init_args": {"decay": 0.9}},
        {"class_path": "diffmvae.training.SampleGrid", "init_args": {"rows": 2}},
        *callbacks,
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True, "save_top_k": 0}},
    ]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, run


def make_polymnist(root, n_train=12, n_test=6, num_modalities=2, seed=0):
    """A tiny PolyMNIST folder in the published layout: ROOT/{train,test}/m{k}/{index}.{digit}.png."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        digits = rng.integers(0, 10, n)
        for k in range(num_modalities):
            folder = root / split / f"m{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, d in enumerate(digits):
                Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i}.{d}.png")
    return root
