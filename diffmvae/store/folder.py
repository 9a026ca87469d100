"""Model folders: a trained run as the Hugging Face Hub lays out a model, with no pickle anywhere.

``diffmvae export --ckpt CKPT --out DIR`` writes::

    DIR/
      model.safetensors   # the model's EMA weights (the LightningModule's ``model``)
      config.yaml         # the model and data configs (class_path / init_args), what was trained, file checksums
      prior.safetensors   # the latent score prior, when one was fitted (its config in the file's metadata)
      README.md           # the model card

:func:`diffmvae.checkpoint.load_run` (and so ``sample``, ``evaluate``, ``prior fit``) accepts such a folder wherever
it accepts a checkpoint. The folder can be uploaded as it is (``huggingface_hub.upload_folder``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import diffmvae
from diffmvae.io import (
    DiffMVAEError,
    check_writable,
    file_sha256,
    refuse_existing,
    save_safetensors,
    tensors_for_safetensors,
    writing,
)
from diffmvae.model.vae import MultimodalVAE
from diffmvae.store.build import TRUSTED_KEY, trusted_of
from diffmvae.store.load import CARD, CONFIG, FOLDER_FORMAT, FOLDER_VERSION, PRIOR, RELATIVE_KEY, WEIGHTS, LoadedRun, load_run
from diffmvae.store.prior_file import default_prior_path, load_prior, read_prior_file, save_prior


def is_model_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def export_model(ckpt: str | os.PathLike, out: str | os.PathLike, *, prior_ckpt: str | os.PathLike | None = None,
                 evaluation: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write the model folder of the ``diffmvae fit`` checkpoint ``ckpt`` to ``out`` (see the module docstring).

    ``prior_ckpt`` (default: the score prior beside ``ckpt``, if any) becomes ``prior.safetensors``; ``evaluation``
    (a ``diffmvae evaluate`` output folder) puts its table into the model card. The folder is built beside ``out``
    and renamed into place: a failure leaves nothing half-written, and an existing ``out`` is replaced only with
    ``overwrite``."""

    out = Path(out)
    refuse_existing(out, overwrite)
    if is_model_folder(ckpt):
        raise DiffMVAEError(f"{ckpt} is already a model folder; export reads a `diffmvae fit` checkpoint")
    check_writable(out.parent, "--out's folder")
    run = load_run(ckpt)
    model = run.module.model
    prior_path = Path(prior_ckpt) if prior_ckpt else default_prior_path(ckpt)
    prior = load_prior(prior_path, model, ckpt) if prior_path.is_file() else None
    if prior_ckpt and prior is None:
        raise DiffMVAEError(f"--prior_ckpt {prior_ckpt} does not exist")
    table = evaluation_table(evaluation) if evaluation else None
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            save_safetensors(tensors_for_safetensors(model.state_dict()), tmp / WEIGHTS,
                             metadata={"format": FOLDER_FORMAT, "diffmvae_version": diffmvae.__version__})
            weights_sha = file_sha256(tmp / WEIGHTS)
            if prior is not None:
                record = read_prior_file(prior_path)  # its spec and fit record (save_prior leaves the loss curve out)
                save_prior(tmp / PRIOR, prior, record["prior"], tmp, model, record.get("fit", {}))
            trained = {"global_step": int(run.checkpoint.get("global_step", 0)), "epoch": int(run.checkpoint.get("epoch", 0)),
                       "source_checkpoint": Path(ckpt).name}
            model_spec, data_spec, relative = portable_config(run, tmp)
            config = {"format": FOLDER_FORMAT, "version": FOLDER_VERSION, "diffmvae_version": diffmvae.__version__,
                      "model": model_spec, "data": data_spec, RELATIVE_KEY: relative,
                      TRUSTED_KEY: list(trusted_of(run.config, f"checkpoint {ckpt}")), "trained": trained,
                      "files": {WEIGHTS: {"sha256": weights_sha}, **({PRIOR: {"sha256": file_sha256(tmp / PRIOR)}} if prior is not None else {})}}
            (tmp / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
            (tmp / CARD).write_text(model_card(run, config, prior is not None, table, out.name))
            replace_dir(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return out


def portable_config(run: LoadedRun, folder: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The run's model and data configs made to need nothing outside ``folder``: each encoder and decoder rebuilt
    from its own sizes (:meth:`~decoders.Decoder.portable_args`: a pretrained network's config instead of its
    folder; the weights are in ``model.safetensors``), and the data's files (a text modality's tokenizer) saved
    into ``folder``. Returns ``(model, data, the config keys holding paths relative to the folder)``."""
    model_spec, data_spec = copy.deepcopy(run.config["model"]), copy.deepcopy(run.config["data"])
    files = run.datamodule.portable_files(folder)
    data_spec.setdefault("init_args", {}).update(files)
    model = run.module.model
    if isinstance(model, MultimodalVAE):
        inner = model_spec["init_args"]["model"].setdefault("init_args", {})
        for group, modules in (("encoders", model.encoders), ("decoders", model.decoders)):
            for key, spec in (inner.get(group) or {}).items():
                if isinstance(spec, dict) and key in modules:
                    spec.setdefault("init_args", {}).update(modules[key].portable_args())
    return model_spec, data_spec, [f"data.init_args.{key}" for key in files]


def replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` onto ``out``; an existing ``out`` is moved aside first and removed only once ``new`` is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    aside = out.with_name(f".{out.name}.old")
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except OSError:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside)


def evaluation_table(folder: str | os.PathLike) -> str:
    """``metrics.md`` of a ``diffmvae evaluate`` output folder."""
    path = Path(folder) / "metrics.md"
    if not path.is_file():
        raise DiffMVAEError(f"--evaluation {folder} has no metrics.md; pass the --out folder of `diffmvae evaluate`")
    return path.read_text().strip()


def describe(spec: Any) -> str:
    """``ClassName(key=value, ...)`` for a class_path spec, one level deep."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        return json.dumps(spec)
    args = ", ".join(f"{k}={v['class_path'].rsplit('.', 1)[-1] if isinstance(v, dict) and 'class_path' in v else json.dumps(v)}"
                     for k, v in (spec.get("init_args") or {}).items())
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({args})"


def grouped(specs: Mapping[str, Any]) -> dict[str, list[str]]:
    """``{description: [keys with that description]}``: five identical decoders are listed once."""
    groups: dict[str, list[str]] = {}
    for key, spec in specs.items():
        groups.setdefault(describe(spec), []).append(key)
    return groups


def model_card(run: Any, config: Mapping[str, Any], has_prior: bool, table: str | None, name: str) -> str:
    model = run.module.model
    params = sum(p.numel() for p in model.parameters())
    module_args = {k: v for k, v in (config["model"].get("init_args") or {}).items() if k != "model"}
    inner = config["model"]["init_args"]["model"]
    inner_args = inner.get("init_args") or {}
    parts = [(f"decoder {', '.join(keys)}", text) for text, keys in grouped(inner_args.get("decoders") or {}).items()]
    parts += [(f"encoder {', '.join(keys)}", text) for text, keys in grouped(inner_args.get("encoders") or {}).items()]
    if "decoder" in inner_args:
        parts.append(("joint decoder", describe(inner_args["decoder"])))
    lines = [
        "---", "library_name: diffmvae", "tags: [multimodal, vae, diffusion, diffmvae]", "---", "",
        f"# {name}", "",
        f"A `{inner['class_path']}` trained with diffmvae {config['diffmvae_version']} "
        f"({params / 1e6:.2f} M parameters; weights are the EMA weights).", "",
        "## Model", "",
        f"- modalities: {', '.join(model.modalities)}",
        f"- latent size: {model.latent_dim if model.has_latent else 'none (a joint diffusion model)'}",
        *(f"- {what}: `{text}`" for what, text in parts),
        f"- latent score prior: {'`prior.safetensors`' if has_prior else 'none (unconditional samples use N(0, I))'}", "",
        "## Data", "",
        f"`{describe(config['data'])}`", "",
        "## Training", "",
        f"- {config['trained']['global_step']} optimizer steps ({config['trained']['epoch'] + 1} epochs), from `{config['trained']['source_checkpoint']}`",
        *(f"- {k}: `{json.dumps(v)}`" for k, v in module_args.items()), "",
        "## Evaluation", "",
        table if table else "Not evaluated (export with `--evaluation DIR` to include a `diffmvae evaluate` table).", "",
        "## Use", "",
        "```bash",
        f"diffmvae sample --ckpt {name} --given {model.modalities[0]} --n 16 --out samples",
        f"diffmvae evaluate --ckpt {name} --out eval",
        "```", "",
        "```python",
        "from diffmvae.checkpoint import load_run",
        f"run = load_run('{name}')   # no pickle: safetensors weights and a YAML config",
        "model = run.module.model",
        "```", "",
        f"`config.yaml` rebuilds the model and its data module; `{WEIGHTS}` holds the weights (its sha256 is in the config).", "",
    ]
    return "\n".join(lines)
