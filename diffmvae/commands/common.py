"""Options and helpers every command shares: sampling options, one-line config errors, the command's seed."""

from __future__ import annotations

import argparse
import re
from typing import Any

import torch
from jsonargparse import ArgumentError, set_parsing_settings

from decoders.diffusion import Sampler
from diffmvae.io import DiffMVAEError, one_line

SAMPLING_OPTIONS = ("sampler", "steps", "eta", "guidance", "start")


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler/--steps/--eta/--guidance/--start``: how every diffusion decoder samples (also used by the
    experiment scripts). Unset options keep the run's default (its config's ``sampling``, else exact sampling
    with each decoder's own sampler)."""
    p.add_argument("--sampler", default=None, help="sampler of every diffusion decoder: ddim, ancestral, euler_maruyama (as the process allows)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's own)")
    p.add_argument("--eta", type=float, default=None, help="DDIM's eta (0: deterministic, 1: ancestral)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale of every diffusion decoder (1: none; needs decoders trained with cond_dropout)")
    p.add_argument("--start", type=float, default=None,
                   help="time in (0, 1] where sampling begins: 1 (default) samples the model exactly; below 1 refines the "
                        "decoder's noised mean image (recorded in the outputs)")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line."""
    return {k: getattr(args, k) for k in SAMPLING_OPTIONS if getattr(args, k, None) is not None}


def sampling_settings(args: argparse.Namespace, module: Any) -> Any:
    """The run's default :class:`~decoders.SamplingSettings` with the command line's overrides, checked against the
    model (one-line errors before any sampling)."""

    overrides = sampling_overrides(args)
    sampling = module.sampling.replace(**overrides)
    if not module.model.check_sampling(sampling) and overrides:
        raise DiffMVAEError(f"--{'/--'.join(overrides)} apply to diffusion decoders, and this model has none")
    return sampling


def configure_parsing() -> None:
    """jsonargparse settings the configs need: samplers are dataclasses, accepted by ``class_path`` as subclasses."""


    set_parsing_settings(subclasses_enabled=[Sampler])


def _parser_error(text: str) -> str:
    """Distil jsonargparse's nested Union report to the innermost class and its complaint."""
    where, what = None, text
    while (match := re.search(r"Problem with given class_path '([^']+)': (.*)", what)) is not None:
        where, what = match.group(1), match.group(2)
    if where is None:
        listed = re.search(r"Errors: - (.*?)(?: - Expected a <class 'NoneType'>| Given value|$)", text)
        return (listed.group(1).strip() if listed else text)[:400]
    what = re.split(r" - Expected a <class| Given value", what)[0].strip()
    outer = re.match(r'Parser key "([^"]+)"', text)
    prefix = f'config key "{outer.group(1)}" ' if outer else ""
    return f"{prefix}({where}): {what}"[:400]


def _config_error(e: BaseException) -> Exception:
    """A jsonargparse error as a one-line DiffMVAEError naming the innermost class and its complaint."""

    return DiffMVAEError(_parser_error(one_line(e)))


def _parse_config(parser: Any, argv: list[str]) -> Any:
    """``parser.parse_args(argv)`` for a jsonargparse parser, its errors turned into one-line DiffMVAEErrors."""

    try:
        return parser.parse_args(argv)
    except ArgumentError as e:
        raise _config_error(e) from e


def seed_torch(seed: int) -> None:
    """Seed the global RNG at a command's entry: module initialisation (PyTorch's initialisers take no generator)
    and dropout draw from it. The library itself never seeds it; its draws come from generators it is passed."""

    torch.manual_seed(seed)
