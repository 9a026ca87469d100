"""Options and helpers every command shares: sampling options, one-line config errors, the command's seed."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import torch
from jsonargparse import ArgumentError

from diffmvae.io import DiffMVAEError, one_line
from diffmvae.store.build import parser_error

SAMPLING_OPTIONS = ("sampler", "steps", "eta", "grid", "guidance", "start", "unconditional")
TEXT_OPTIONS = {"text_strategy": "strategy", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p"}
MAX_ERROR = 300  # characters of an error line


def short(message: str) -> str:
    """An error message cut to one line of at most :data:`MAX_ERROR` characters."""
    message = " ".join(message.split())
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 3] + "..."


def dash_hint(message: str) -> str:
    """``message`` with the underscore spelling of a dash-spelled flag it complains about (flags use underscores)."""
    flags = re.findall(r"--[a-z]+(?:-[a-z]+)+", message)
    return message + "".join(f" (flags use underscores: --{f[2:].replace('-', '_')})" for f in flags[:1])


class CommandParser(argparse.ArgumentParser):
    """The parser of the library's own commands: errors are one ``DiffMVAEError`` line (not usage text and exit),
    a flag spelled with dashes is answered with its underscore spelling, and an empty value (``--given ''``) is
    refused instead of being read as "nothing"."""

    def error(self, message: str) -> NoReturn:
        raise DiffMVAEError(dash_hint(message))

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        refuse_empty(vars(parsed))
        return parsed


def refuse_empty(values: Mapping[str, Any]) -> None:
    """One line naming the first option given an empty string (alone or in a repeated option's list)."""
    for key, value in values.items():
        if value == "" or (isinstance(value, list) and "" in value):
            raise DiffMVAEError(f"--{key} is empty; give a value or leave the option out")



def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """``--sampler/--steps/--eta/--grid/--guidance/--start/--unconditional``: how every diffusion decoder samples (also used by the
    experiment scripts). Unset options keep the run's default (its config's ``sampling``, else exact sampling
    with each decoder's own sampler)."""
    p.add_argument("--sampler", default=None, help="sampler of every diffusion decoder: ddim, dpmpp_2m (DPM-Solver++, 10-20 steps), ancestral, euler_maruyama (as the process allows)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's own)")
    p.add_argument("--eta", type=float, default=None, help="DDIM's eta (0: deterministic, 1: ancestral)")
    p.add_argument("--grid", choices=("time", "logsnr"), default=None,
                   help="dpmpp_2m's evaluation times: uniform in time (its default) or in log-SNR")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale of every diffusion decoder (1: none; needs decoders trained with cond_dropout)")
    p.add_argument("--start", type=float, default=None,
                   help="time in (0, 1] where sampling begins: 1 (default) samples the model exactly; below 1 refines the "
                        "decoder's noised mean image (recorded in the outputs)")
    p.add_argument("--unconditional", choices=("reestimate", "dropped", "sampled"), default=None,
                   help="MT-Diffusion decoders: how a conditioning modality that is not given is generated (Algorithm 1's "
                        "re-estimation, the null path, or drawn first and held); default: the decoder's own (recorded)")
    p.add_argument("--text_strategy", choices=("greedy", "sample"), default=None, help="how text decoders pick tokens (default: greedy)")
    p.add_argument("--temperature", type=float, default=None, help="text sampling temperature (with --text_strategy sample)")
    p.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=float, default=None, help="sample from the nucleus of this probability mass (1: all)")


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given on the command line (text options under ``text``)."""
    out: dict[str, Any] = {k: getattr(args, k) for k in SAMPLING_OPTIONS if getattr(args, k, None) is not None}
    text = {field: getattr(args, k) for k, field in TEXT_OPTIONS.items() if getattr(args, k, None) is not None}
    return {**out, "text": text} if text else out


def sampling_settings(args: argparse.Namespace, module: Any) -> Any:
    """The run's default :class:`~decoders.SamplingSettings` with the command line's overrides, checked against the
    model (one-line errors before any sampling)."""

    overrides = sampling_overrides(args)
    try:
        sampling = module.sampling.replace(**overrides)
    except ValueError as e:
        raise DiffMVAEError(str(e)) from None
    diffusion = [k for k in overrides if k != "text"]
    if not module.model.check_sampling(sampling) and diffusion:
        raise DiffMVAEError(f"--{'/--'.join(diffusion)} apply to diffusion decoders, and this model has none")
    return sampling


def _config_error(e: BaseException) -> Exception:
    """A jsonargparse error as a one-line DiffMVAEError naming the innermost class and its complaint."""

    return DiffMVAEError(parser_error(one_line(e)))


def _parse_config(parser: Any, argv: list[str]) -> Any:
    """``parser.parse_args(argv)`` for a jsonargparse parser, its errors turned into one-line DiffMVAEErrors."""

    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as e:
        raise _config_error(e) from e
    refuse_empty(dict(cfg.items()))
    return cfg


def seed_torch(seed: int) -> None:
    """Seed the global RNG at a command's entry: module initialisation (PyTorch's initialisers take no generator)
    and dropout draw from it. The library itself never seeds it; its draws come from generators it is passed."""

    torch.manual_seed(seed)


def fit_arguments(argv: list[str], command: str, usage: str) -> list[str]:
    """The arguments after ``fit`` of ``diffmvae COMMAND fit ...`` (the only subcommand of ``prior`` and
    ``classifiers``); one line with the usage otherwise."""
    if not argv or argv[0] != "fit":
        raise DiffMVAEError(f"usage: diffmvae {command} fit {usage} (the only {command} command is `fit`)")
    return argv[1:]
