"""Objects from configs, one way: every ``class_path`` / ``init_args`` spec is built by jsonargparse, the parser that
``diffmvae fit`` (LightningCLI) builds a run with, so a stored config rebuilds exactly what training built (its
dataclasses, samplers and nested modules from their type hints). Before jsonargparse imports anything, every
``class_path`` must name a class of the library's packages or one the run itself named when it was trained (the
user's own data modules and decoders, recorded as the run's trusted class paths), so a config never imports a
module it should not.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
from jsonargparse import ArgumentError, ArgumentParser, set_parsing_settings

from decoders.diffusion import Sampler
from diffmvae.io import DiffMVAEError, one_line

LIBRARY_PACKAGES = ("diffmvae", "encoders", "decoders", "priors")


def configure_parsing() -> None:
    """jsonargparse settings the configs need: samplers are dataclasses, accepted by ``class_path`` as subclasses."""
    set_parsing_settings(subclasses_enabled=[Sampler])


def class_paths(spec: Any) -> Iterator[str]:
    """Every ``class_path`` value in a nested config."""
    if isinstance(spec, Mapping):
        if isinstance(spec.get("class_path"), str):
            yield spec["class_path"]
        for value in spec.values():
            yield from class_paths(value)
    elif isinstance(spec, (list, tuple)):
        for value in spec:
            yield from class_paths(value)


def user_class_paths(spec: Any) -> list[str]:
    """The ``class_path`` values of ``spec`` outside the library's packages: the user's own classes, which a run
    records as the code it trusts (:data:`TRUSTED_KEY`)."""
    return sorted({p for p in class_paths(spec) if p.split(".")[0] not in LIBRARY_PACKAGES})


TRUSTED_KEY = "trusted_class_paths"


def trusted_of(config: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The class paths a stored run config trusts besides the library's (written by ``fit`` from its config)."""
    trusted = config.get(TRUSTED_KEY) or []
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise DiffMVAEError(f"{where}: {TRUSTED_KEY} must be a list of class paths")
    return tuple(trusted)


def check_class_paths(spec: Any, where: str, trusted: Sequence[str] = ()) -> None:
    """One line (``DiffMVAEError``) when a ``class_path`` of ``spec`` is neither in the library's packages nor one of
    ``trusted`` (the classes the run named itself); nothing is imported before this check."""
    for path in class_paths(spec):
        if path.split(".")[0] not in LIBRARY_PACKAGES and path not in trusted:
            raise DiffMVAEError(f"{where}: class_path {path!r} is outside the packages {', '.join(LIBRARY_PACKAGES)} and not one "
                                f"the run named (its {TRUSTED_KEY}); it is not imported")


def parser_error(text: str) -> str:
    """Distil jsonargparse's nested report to the innermost class and its complaint (at most 400 characters)."""
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


def build(specs: Mapping[str, Any], bases: Mapping[str, type], where: str, trusted: Sequence[str] = ()) -> dict[str, Any]:
    """``{key: object}`` built from ``specs[key]`` (a ``class_path`` / ``init_args`` spec of a subclass of
    ``bases[key]``) by jsonargparse; a spec that does not build is one line starting with ``where``. Classes outside
    the library are imported only when listed in ``trusted``."""
    check_class_paths({key: specs[key] for key in bases}, where, trusted)
    configure_parsing()
    parser = ArgumentParser(exit_on_error=False)
    for key, base in bases.items():
        parser.add_subclass_arguments(base, key, required=True)
    try:
        parsed = parser.parse_object(copy.deepcopy({key: specs[key] for key in bases}))  # it rewrites what it is given
        built = parser.instantiate(parsed)
    except ArgumentError as e:
        raise DiffMVAEError(f"{where} ({parser_error(one_line(e))})") from e
    except (TypeError, ValueError, KeyError, ImportError) as e:
        raise DiffMVAEError(f"{where} ({one_line(e)[:300]})") from e
    return {key: built[key] for key in bases}


def build_run(config: Mapping[str, Any], where: str) -> tuple[L.LightningModule, L.LightningDataModule]:
    """The LightningModule and the DataModule of a run config (``model`` and ``data``, as ``diffmvae fit`` stored them)."""
    built = build(config, {"model": L.LightningModule, "data": L.LightningDataModule}, where, trusted_of(config, where))
    return built["model"], built["data"]


def build_data(spec: Mapping[str, Any], where: str, trusted: Sequence[str] = ()) -> L.LightningDataModule:
    """The DataModule of a ``data`` config."""
    return build({"data": spec}, {"data": L.LightningDataModule}, where, trusted)["data"]
