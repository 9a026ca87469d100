import pytest
import torch

from conftest import tiny_image_vae
from decoders.optim import lr_factor
from diffmvae.training import DiffMVAE


def test_lr_factor_warmup_then_cosine_to_zero():
    f = [lr_factor(s, schedule="cosine", warmup=4, total=14) for s in range(15)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.5)  # halfway through the decay
    assert f[14] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_lr_factor_constant_after_warmup():
    assert [lr_factor(s, schedule="constant", warmup=2, total=10) for s in (0, 1, 2, 50)] == [0.5, 1.0, 1.0, 1.0]


def test_unknown_lr_schedule_is_refused():
    model = tiny_image_vae()
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        DiffMVAE(dict(model.encoders), dict(model.decoders), model.latent_dim, lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        DiffMVAE(dict(model.encoders), dict(model.decoders), model.latent_dim, warmup_steps=-1)


def test_staged_lr_schedule_restarts_at_the_diffusion_stage():
    from diffmvae.training import staged_lr_factor

    f = lambda step: staged_lr_factor(step, schedule="cosine", warmup=10, total=300, stage=100)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(99) < 0.01  # stage 1: warm-up, then decay to ~0 at step 100
    assert f(100) == pytest.approx(0.1) and f(109) == pytest.approx(1.0)  # stage 2: its own warm-up
    assert f(299) < 0.001
    assert staged_lr_factor(50, schedule="cosine", warmup=10, total=300) == lr_factor(50, schedule="cosine", warmup=10, total=300)
