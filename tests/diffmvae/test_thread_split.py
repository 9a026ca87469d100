"""thread_split: a training batch cut into parts, each part's forward and backward on its own CPU thread."""

import copy
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from test_training import diffusion_vae_and_batch

from decoders.threads import cuts
from diffmvae.generation.sampling import generate_from_subset
from diffmvae.training.module import TrainingModule
from diffmvae.training.threads import split_examples, threaded_step


@contextmanager
def worker_threads(parts):
    """The intra-op threads a worker of a ``parts``-way split runs with: the same kernels, so the same rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // parts))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def part_loss(module):
    """The module's objective on one part (what ``TrainingModule._step`` hands the threads)."""
    def part(x, present, g):
        record = module.model.elbo(x, present, generator=g)
        return record.loss(module.beta, module.weights_for(x), module.term_weights).mean(), record.means()
    return part


def test_split_examples_cuts_every_entry_and_its_mask_into_consecutive_parts():
    x = {"img": torch.arange(5.0).view(5, 1), "text": {"input_ids": torch.arange(10).view(5, 2), "attention_mask": torch.ones(5, 2)}}
    present = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1], [1, 0]], dtype=torch.bool)
    parts = split_examples(x, present, 2)
    assert [share for _, _, share in parts] == [0.4, 0.6]
    assert parts[0][0]["img"].flatten().tolist() == [0.0, 1.0] and parts[1][0]["img"].flatten().tolist() == [2.0, 3.0, 4.0]
    assert parts[1][0]["text"]["input_ids"].tolist() == [[4, 5], [6, 7], [8, 9]]
    assert torch.equal(torch.cat([parts[0][1], parts[1][1]]), present)
    assert len(split_examples(x, None, 8)) == 5  # never an empty part


def test_thread_split_gives_the_gradient_of_the_share_weighted_parts():
    """The threads' loss and every gradient equal those of ``sum_k share_k * loss_k`` computed in one thread with the
    same parts and the same per-part noise on one intra-op thread (float tolerance 1e-5, far below what a wrong share (0.5 vs 1: a factor
    of 2), a dropped part or a gradient handed to the wrong parameter would change); the incoming gradient scales
    them (a gradient scaler's factor)."""
    model, x = diffusion_vae_and_batch()
    threaded = TrainingModule(model, thread_split=2)
    serial = TrainingModule(copy.deepcopy(model))
    params = [p for p in threaded.model.parameters() if p.requires_grad]
    loss, means = threaded_step(part_loss(threaded), x, None, 2, torch.Generator().manual_seed(5), params)
    (8.0 * loss).backward()

    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().manual_seed(5)).tolist()
    ref = 0.0
    with worker_threads(2):
        for (x_k, _, share), seed in zip(split_examples(x, None, 2), seeds):
            ref = ref + share * part_loss(serial)(x_k, None, torch.Generator().manual_seed(seed))[0]
        (8.0 * ref).backward()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-5, atol=0)
    assert set(means) >= {"kl", "m0/diffusion", "m1/diffusion"}
    for (name, a), b in zip(serial.model.named_parameters(), threaded.model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert (b.grad - a.grad).norm() <= 1e-5 * a.grad.norm() + 1e-6, name  # (+1e-6: biases before a GroupNorm have gradient ~0)


def test_a_parameter_no_part_reaches_gets_no_gradient():
    model, x = diffusion_vae_and_batch()
    module = TrainingModule(model)
    idle = torch.nn.Parameter(torch.ones(3))
    loss, _ = threaded_step(part_loss(module), x, None, 3, torch.Generator().manual_seed(0), [*model.parameters(), idle])
    loss.backward()
    assert idle.grad is None and all(p.grad is not None for p in model.encoders.parameters())


def test_thread_split_is_deterministic_and_draws_noise_from_the_step_generator():
    model, x = diffusion_vae_and_batch()
    module = TrainingModule(model)
    params = list(model.parameters())
    value = lambda seed: threaded_step(part_loss(module), x, None, 2, torch.Generator().manual_seed(seed), params)[0].item()  # noqa: E731
    assert value(3) == value(3) != value(4)


def test_thread_split_settings_are_checked_and_apply_to_one_cpu_process(caplog):
    model, _ = diffusion_vae_and_batch()
    with pytest.raises(ValueError, match="thread_split must be a whole number >= 1, got 0"):
        TrainingModule(model, thread_split=0)
    module = TrainingModule(model, thread_split=2)
    module._trainer = SimpleNamespace(world_size=1, global_rank=0)
    module.on_fit_start()
    assert module._split == 2
    module._trainer = SimpleNamespace(world_size=2, global_rank=0)
    module.on_fit_start()
    assert module._split == 1 and "thread_split 2 applies to a one-process CPU fit; this one runs 2 process(es) on cpu" in caplog.text


def test_a_fit_with_thread_split_trains_and_repeats_exactly(tmp_path):
    """Two fits of the tiny run with ``thread_split: 2`` from the same seed end with the same weights, which differ
    from a fit without the split (other noise draws)."""
    from tiny_run import copy_config, write_config

    from diffmvae.commands.main import main

    weights = {}
    for name, split in (("a", 2), ("b", 2), ("plain", 1)):
        cfg = copy_config()
        cfg["trainer"]["limit_val_batches"] = 0
        cfg["model"]["init_args"]["thread_split"] = split
        path, run = write_config(tmp_path / name, cfg)
        assert main(["fit", "--config", str(path)]) == 0
        weights[name] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert any(not torch.equal(weights["a"][k], weights["plain"][k]) for k in weights["a"] if weights["a"][k].is_floating_point())


def test_the_callers_autocast_reaches_the_worker_threads():
    """Autocast state is thread-local: under ``bf16-mixed`` on a CPU the parts must run their matmuls in bfloat16 as
    the unsplit step does (without re-entering the region on the workers they run in float32)."""
    weight = torch.nn.Parameter(torch.randn(4, 3))

    def part(x, present, g):
        y = x["a"] @ weight
        return y.float().square().mean(), {"bf16": torch.tensor(float(y.dtype == torch.bfloat16))}

    x = {"a": torch.randn(6, 4)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, means = threaded_step(part, x, None, 2, torch.Generator().manual_seed(0), [weight])
    assert means["bf16"].item() == 1.0
    _, means = threaded_step(part, x, None, 2, torch.Generator().manual_seed(0), [weight])
    assert means["bf16"].item() == 0.0


@pytest.mark.parametrize("given", [["m0"], []])
def test_split_sampling_generates_each_part_of_each_chunk_with_its_own_generator(given):
    """``generate_from_subset(thread_split=2)`` equals generating every part of every chunk in one thread with the
    part's generator (seeds drawn from the caller's generator chunk by chunk) and its own rows of the observed
    modalities: a part given the wrong rows, or the caller's generator shared between threads, fails it."""
    model, x = diffusion_vae_and_batch()
    model.eval()
    n, chunk = 5, 3
    out = generate_from_subset(model, x, given, n, generator=torch.Generator().manual_seed(3), thread_split=2, chunk_size=chunk,
                               progress=False)
    generator, ref = torch.Generator().manual_seed(3), []
    with worker_threads(2), torch.inference_mode():
        for start in range(0, n, chunk):
            rows = [(start + a, start + b) for a, b in cuts(min(chunk, n - start), 2)]
            seeds = torch.randint(0, 2**62, (len(rows),), generator=generator).tolist()
            ref += [model.generate({m: x[m][a:b] for m in given} or None, b - a, generator=torch.Generator().manual_seed(s))
                    for (a, b), s in zip(rows, seeds)]
    for m in model.modalities:
        torch.testing.assert_close(out[m], torch.cat([r[m] for r in ref]), rtol=0, atol=1e-6)
    unsplit = generate_from_subset(model, x, given, n, generator=torch.Generator().manual_seed(3), chunk_size=chunk, progress=False)
    assert not torch.allclose(unsplit["m1"], out["m1"])
    if given:
        assert torch.equal(out["m0"], x["m0"][:n])
