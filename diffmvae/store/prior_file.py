"""Prior files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffmvae.io import (
    DiffMVAEError,
    atomic_write,
    file_sha256,
    load_tensors,
    read_safetensors,
    save_safetensors,
    tensors_for_safetensors,
    torch_save,
)
from diffmvae.model.vae import MultimodalVAE
from diffmvae.store.build import build
from priors import ScorePrior

FORMAT, VERSION = "diffmvae-latent-prior", 1


def weights_file(model_ckpt: str | Path) -> Path:
    """The file a prior is tied to: the checkpoint itself, or a model folder's ``model.safetensors``."""
    model_ckpt = Path(model_ckpt)
    return model_ckpt / "model.safetensors" if model_ckpt.is_dir() else model_ckpt


def default_prior_path(model_ckpt: str | Path) -> Path:
    """Where ``diffmvae prior fit`` writes and ``diffmvae sample`` looks: ``last.ckpt`` -> ``last.prior.ckpt``; a
    model folder's ``prior.safetensors``."""
    model_ckpt = Path(model_ckpt)
    if model_ckpt.is_dir():
        return model_ckpt / "prior.safetensors"
    return model_ckpt.with_name(model_ckpt.stem + ".prior.ckpt")


def save_prior(path: str | Path, prior: ScorePrior, spec: Mapping[str, Any], model_ckpt: str | Path, model: MultimodalVAE, fit: Mapping[str, Any]) -> Path:
    """Write the prior checkpoint atomically (a failed write leaves any earlier file intact): a ``.safetensors``
    path gets the tensors with the rest as JSON metadata (the model-folder form), any other a ``torch.save`` dict."""
    meta = {"checkpoint": "model.safetensors" if Path(model_ckpt).is_dir() else str(model_ckpt), "sha256": file_sha256(weights_file(model_ckpt)), "latent_dim": model.latent_dim,
            "modalities": list(model.modalities)}
    if Path(path).suffix == ".safetensors":

        header = {"format": FORMAT, "version": str(VERSION), "prior": json.dumps(dict(spec)), "model": json.dumps(meta),
                  "fit": json.dumps({k: v for k, v in dict(fit).items() if k != "losses"})}
        return atomic_write(path, lambda tmp: save_safetensors(tensors_for_safetensors(prior.state_dict()), tmp, metadata=header))
    payload = {"format": FORMAT, "version": VERSION, "prior": dict(spec), "state_dict": prior.state_dict(), "model": meta, "fit": dict(fit)}
    return atomic_write(path, lambda tmp: torch_save(payload, tmp))


def read_prior_file(path: Path) -> dict[str, Any]:
    """Either prior format as ``{"format", "prior", "state_dict", "model", "fit"}``."""
    if path.suffix != ".safetensors":
        return load_tensors(path, "prior checkpoint")
    tensors, header = read_safetensors(path, "prior")
    try:
        return {"format": header.get("format"), "prior": json.loads(header["prior"]), "state_dict": tensors, "model": json.loads(header["model"]),
                "fit": json.loads(header.get("fit", "{}"))}
    except (KeyError, ValueError) as e:
        raise DiffMVAEError(f"{path} is not a latent-prior file (its metadata has no valid {e})") from e


def load_prior(path: str | Path, model: MultimodalVAE, model_ckpt: str | Path | None = None) -> ScorePrior:
    """Read a prior checkpoint (``weights_only=True``) and check it fits ``model``: same latent size and, when
    ``model_ckpt`` is given, the very checkpoint file it was fitted to."""
    path = Path(path)
    ckpt = read_prior_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DiffMVAEError(f"{path} is not a latent-prior checkpoint (written by `diffmvae prior fit`)")
    meta = ckpt["model"]
    if meta["latent_dim"] != model.latent_dim:
        raise DiffMVAEError(f"prior checkpoint {path} models a {meta['latent_dim']}-d latent but the model's latent has {model.latent_dim} dimensions")
    if model_ckpt is not None and file_sha256(weights_file(model_ckpt)) != meta["sha256"]:
        raise DiffMVAEError(f"prior checkpoint {path} was fitted to another model checkpoint ({meta['checkpoint']}); refit it with `diffmvae prior fit --ckpt {model_ckpt}`")
    prior = build({"prior": ckpt.get("prior")}, {"prior": ScorePrior}, f"prior checkpoint {path} does not build its prior")["prior"]
    try:
        prior.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise DiffMVAEError(f"prior checkpoint {path} does not match its prior ({' '.join(str(e).split())[:200]})") from e
    return prior.eval()


