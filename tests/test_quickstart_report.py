"""The main job's report names the precision its run trained in, read from the run's config.yaml."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "polydigits"))
from quickstart_report import training_precision  # noqa: E402


@pytest.mark.parametrize("written, read", [("bf16-mixed", "bf16-mixed"), ("32-true", "32-true"), ("null", "32-true")])
def test_training_precision_reads_the_config_and_null_is_lightnings_default(tmp_path, written, read):
    (tmp_path / "config.yaml").write_text(f"seed_everything: 0\ntrainer:\n  accelerator: auto\n  precision: {written}\n")
    assert training_precision(tmp_path) == read


def test_a_run_without_a_config_has_no_precision_to_report(tmp_path):
    assert training_precision(tmp_path) is None
