"""decoders.threads: work on CPU threads, each part with its own generator, under the caller's thread-local modes."""

import threading

import pytest
import torch

from decoders.threads import cuts, parts_on, run_on_threads


def test_cuts_cover_the_range_in_equal_consecutive_pieces():
    assert cuts(7, 2) == [(0, 3), (3, 7)]
    assert cuts(3, 5) == [(0, 1), (1, 2), (2, 3)]  # never an empty piece
    assert cuts(4, 1) == [(0, 4)]


def test_a_split_applies_on_a_cpu_only():
    assert parts_on("cpu", 3) == 3 and parts_on(torch.device("cpu"), 1) == 1
    assert parts_on("cuda", 3) == 1 and parts_on("mps", 2) == 1


def test_parts_run_on_worker_threads_in_order_with_their_own_seeded_generators():
    def work(part, g):
        return part, threading.current_thread().name, torch.rand(3, generator=g)

    out = run_on_threads(work, ["a", "b"], torch.Generator().manual_seed(0))
    again = run_on_threads(work, ["a", "b"], torch.Generator().manual_seed(0))
    other = run_on_threads(work, ["a", "b"], torch.Generator().manual_seed(1))
    assert [o[0] for o in out] == ["a", "b"]
    assert all(name.startswith("diffmvae-split") for _, name, _ in out)
    assert not torch.equal(out[0][2], out[1][2])  # each part its own noise
    assert all(torch.equal(a[2], b[2]) for a, b in zip(out, again))
    assert not torch.equal(out[0][2], other[0][2])


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference"])
def test_the_callers_grad_and_inference_mode_reach_the_workers(mode):
    """Grad and inference mode are thread-local: without re-entering them a worker would record a graph under the
    caller's ``no_grad`` (and keep its memory) or leave ``inference_mode``."""
    w = torch.ones(2, requires_grad=True)

    def work(part, g):
        y = w * part
        return y.requires_grad, y.is_inference()

    region = {"grad": torch.enable_grad(), "no_grad": torch.no_grad(), "inference": torch.inference_mode()}[mode]
    with region:
        got = run_on_threads(work, [1.0, 2.0], torch.Generator().manual_seed(0))
    assert got == [(mode == "grad", mode == "inference")] * 2
