"""The sampling benchmark's SAMPLER:STEPS[:GRID] rows: DPM-Solver++ rows always name their grid (so a checkpoint whose
own solver uses the other grid is sampled as the row says), and a malformed row is one readable line."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))
from sampling_throughput import label, parse_config  # noqa: E402


def test_rows_name_sampler_steps_and_grid():
    assert parse_config("ddim:50") == ("ddim", 50, None)
    assert parse_config("dpmpp_2m:15") == ("dpmpp_2m", 15, "time")
    assert parse_config("dpmpp_2m:20:logsnr") == ("dpmpp_2m", 20, "logsnr")
    assert label(parse_config("dpmpp_2m:20:logsnr")) == "dpmpp_2m-20-logsnr" and label(("ddim", 50, None)) == "ddim-50"


@pytest.mark.parametrize("text", ["ddim", "ddim:x", "dpmpp_2m:20:karras", "dpmpp_2m:20:time:x"])
def test_a_malformed_row_is_one_line(text):
    with pytest.raises(SystemExit, match=f"--configs: '{text}' is not SAMPLER:STEPS"):
        parse_config(text)
