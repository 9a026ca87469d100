"""Trained runs on disk: loading a ``diffmvae fit`` checkpoint or a model folder (``load``), writing a model folder
(``folder``), and the latent score prior's own file (``prior_file``). Nothing here unpickles code."""

from diffmvae.store.folder import export_model
from diffmvae.store.load import LoadedRun, load_run

__all__ = ["LoadedRun", "export_model", "load_run"]
