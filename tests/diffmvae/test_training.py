import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import tiny_image_vae
from lightning.pytorch.plugins.precision import MixedPrecision, Precision

from decoders import DiffusionDecoder
from decoders.diffusion import DDIM, DDPMProcess
from decoders.optim import lr_factor
from diffmvae.model.vae import MultimodalVAE
from diffmvae.training.module import TrainingModule, staged_lr_factor
from encoders import ConvImageEncoder


def test_lr_factor_warmup_then_cosine_to_zero():
    f = [lr_factor(s, schedule="cosine", warmup=4, total=14) for s in range(15)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.5)  # halfway through the decay
    assert f[14] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_lr_factor_constant_after_warmup():
    assert [lr_factor(s, schedule="constant", warmup=2, total=10) for s in (0, 1, 2, 50)] == [0.5, 1.0, 1.0, 1.0]


def test_bad_module_settings_are_refused():
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        TrainingModule(tiny_image_vae(), lr_schedule="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainingModule(tiny_image_vae(), warmup_steps=-1)
    with pytest.raises(ValueError, match="modality_weights names unknown modality 'm9'"):
        TrainingModule(tiny_image_vae(), modality_weights={"m9": 2.0})


def test_staged_lr_schedule_restarts_where_asked():
    f = lambda step: staged_lr_factor(step, schedule="cosine", warmup=10, total=300, restarts=(100,))  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(99) < 0.01  # stage 1: warm-up, then decay to ~0 at step 100
    assert f(100) == pytest.approx(0.1) and f(109) == pytest.approx(1.0)  # stage 2: its own warm-up
    assert f(299) < 0.001
    assert staged_lr_factor(50, schedule="cosine", warmup=10, total=300) == lr_factor(50, schedule="cosine", warmup=10, total=300)
    g = lambda step: staged_lr_factor(step, schedule="cosine", warmup=0, total=300, restarts=(100, 200, 999))  # noqa: E731
    assert g(100) == g(200) == pytest.approx(1.0) and g(150) == pytest.approx(0.5) and g(250) == pytest.approx(0.5)


def test_module_holds_the_model_it_is_given_and_collects_restarts():
    vae = tiny_image_vae()
    module = TrainingModule(vae, lr_restarts=[50])
    assert module.model is vae
    module.add_lr_restart(20)
    module.add_lr_restart(50)
    assert module.lr_restarts == [20, 50]


def test_a_non_finite_loss_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    import torch
    from tiny_run import DECODER, copy_config, vae_args, write_config

    from diffmvae.commands.main import main

    cfg = copy_config()
    cfg["trainer"].update({"max_steps": 8, "limit_val_batches": 0})
    vae_args(cfg)["decoders"]["m1"] = {"class_path": "faulty.NaNAfter", "init_args": {**DECODER["init_args"], "after": 3}}
    every_step = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(tmp_path / "steps"), "every_n_train_steps": 1, "save_top_k": -1, "filename": "{step}"}}
    path, run = write_config(tmp_path, cfg, callbacks=[every_step])
    assert main(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train step 3: the loss is not finite (term m1/nll)" in err[0], err
    saved = sorted(p.name for p in (tmp_path / "steps").iterdir())
    assert saved == ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]  # nothing written at or after the bad step
    good = torch.load(tmp_path / "steps" / "step=3.ckpt", weights_only=True)  # (load_run rebuilds library classes only)
    assert good["global_step"] == 3 and all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_likelihood_reduction_mean_divides_each_modality_by_its_dimensions(mixed_vae):
    """`mean`: an image modality's terms are divided by its C*H*W = 192 dimensions, a label's by 1, the KL by
    nothing; `sum` is the ELBO as written; beta and the modality weights reach the objective either way."""

    g = torch.Generator().manual_seed(0)
    x = {"img": torch.rand(5, 3, 8, 8, generator=g), "label": torch.randint(0, 10, (5,), generator=g)}
    record = mixed_vae.elbo(x, generator=torch.Generator().manual_seed(1))
    img = sum(v for k, v in record.terms.items() if k.startswith("img/"))
    label = sum(v for k, v in record.terms.items() if k.startswith("label/"))
    for reduction, scale in (("sum", 1.0), ("mean", 1 / 192)):
        module = TrainingModule(mixed_vae, beta=0.25, modality_weights={"img": 2.0}, likelihood_reduction=reduction)
        loss = record.loss(module.beta, module.weights_for(x), module.term_weights)
        torch.testing.assert_close(loss, 2.0 * scale * img + label + 0.25 * record.terms["kl"])
    with pytest.raises(ValueError, match="likelihood_reduction"):
        TrainingModule(mixed_vae, likelihood_reduction="average")


def diffusion_vae_and_batch():
    """Two image modalities, conv encoders and DDPM decoders (the UNet's output layer given weights, as a few steps
    would), and a batch of each: the model the speed-setting tests compare against itself."""
    torch.manual_seed(0)
    names = ("m0", "m1")
    encoders = {m: ConvImageEncoder(4, image_size=8, channels=(4, 4), hidden_dim=8) for m in names}
    decoders = {m: DiffusionDecoder(4, DDPMProcess(sampler=DDIM(3)), image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,),
                                    mean_hidden=8) for m in names}
    for dec in decoders.values():
        torch.nn.init.normal_(dec.net.out[-1].weight, std=0.1)
    x = {m: torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(k)) for k, m in enumerate(names)}
    return MultimodalVAE(encoders, decoders, 4), x


def backward_loss(module, batch):
    """The module's objective on ``batch`` (the same training noise every call), back-propagated."""
    record = module.model.elbo(batch, generator=torch.Generator().manual_seed(0))
    loss = record.loss(module.beta, module.weights_for(batch), module.term_weights).mean()
    loss.backward()
    return loss


def test_channels_last_is_the_same_computation_in_another_memory_order():
    """`channels_last` puts every 4-D weight (conv encoders, the UNet, the mean head) in NHWC order and feeds NHWC
    batches; loss and every gradient equal the NCHW model's (float tolerance, 1e-4 relative, far below the change a
    mis-ordered flatten or view would make) for the same weights, batch and noise (each gradient within 1e-4 of its norm, + 1e-4)."""
    model, x = diffusion_vae_and_batch()
    plain = TrainingModule(model)
    nhwc = TrainingModule(copy.deepcopy(plain.model), channels_last=True)
    nhwc.apply_memory_format()
    convs = [p for p in nhwc.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs if p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1)
    losses = [backward_loss(plain, x), backward_loss(nhwc, {m: v.contiguous(memory_format=torch.channels_last) for m, v in x.items()})]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=0)
    for (name, a), b in zip(plain.model.named_parameters(), nhwc.model.parameters()):
        assert (b.grad - a.grad).norm() <= 1e-4 * a.grad.norm() + 1e-4, name  # (+1e-4: biases before a GroupNorm have gradient ~0)


@pytest.mark.parametrize("precision, kernel", [("32-true", "fused"), ("bf16-mixed", "fused"), ("16-mixed", "foreach")])
def test_adamw_is_fused_unless_a_gradient_scaler_runs(precision, kernel):
    """One fused AdamW kernel where Lightning allows it; under 16-mixed its gradient scaler and gradient clipping
    cannot be combined with a fused optimizer, so the update falls back to foreach."""
    module = TrainingModule(tiny_image_vae(), lr_schedule="constant")
    plugin = Precision() if precision == "32-true" else MixedPrecision(precision, "cpu")
    module._trainer = SimpleNamespace(precision_plugin=plugin)
    opt = module.configure_optimizers()
    assert bool(opt.defaults["fused"]) is (kernel == "fused") and bool(opt.defaults["foreach"]) is (kernel == "foreach")


def test_compile_backend_compiles_the_hot_networks_in_place():
    """compile_backend: every conv/vector encoder and diffusion UNet is compiled in place (nn.Module.compile), so
    parameter names, and so checkpoints, are unchanged; loss and gradients equal the eager model's. Backend aot_eager
    traces forward and backward graphs as inductor does, without generating code (a test-sized check of the path)."""
    model, x = diffusion_vae_and_batch()
    eager = TrainingModule(model)
    compiled = TrainingModule(copy.deepcopy(eager.model), compile_backend="aot_eager")
    eager.on_fit_start()
    compiled.on_fit_start()
    assert [type(n).__name__ for n in compiled.compiled_networks()] == ["ConvImageEncoder", "ConvImageEncoder", "UNet2d", "UNet2d"]
    assert all(n._compiled_call_impl is not None for n in compiled.compiled_networks())
    assert all(n._compiled_call_impl is None for n in eager.compiled_networks())
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    losses = [backward_loss(eager, x), backward_loss(compiled, x)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=0)
    for (name, a), b in zip(eager.model.named_parameters(), compiled.model.parameters()):
        assert (b.grad - a.grad).norm() <= 1e-5 * a.grad.norm() + 1e-6, name


def test_ema_averaged_swaps_the_average_in_for_the_block_and_the_raw_weights_back():
    from diffmvae.training import EMA

    module = SimpleNamespace(model=torch.nn.Linear(3, 2), device=torch.device("cpu"))
    ema = EMA(decay=0.5)
    ema.on_fit_start(None, module)
    with torch.no_grad():
        module.model.weight.add_(1.0)
    ema.ema.update()  # the average now lies between the first and the current weights (torch-ema's warm-up decay)
    raw = module.model.weight.detach().clone()
    with ema.averaged():
        assert torch.equal(module.model.weight, ema.ema.shadow_params[0])
        assert not torch.equal(module.model.weight, raw)
        with ema.averaged():  # already in: nothing more to swap, and nothing restored early
            pass
        assert torch.equal(module.model.weight, ema.ema.shadow_params[0])
    assert torch.equal(module.model.weight, raw)


class _GradNorms(L.Callback):
    """The total gradient norm before clipping (``on_before_optimizer_step``) and after the step (the gradients the
    update used, still in place at the batch's end)."""

    def __init__(self) -> None:
        self.before, self.after = [], []

    @staticmethod
    def norm(module) -> float:
        return torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None]).norm().item()

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.before.append(self.norm(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after.append(self.norm(module))


def test_bf16_mixed_clips_the_fused_optimizers_gradients(tmp_path):
    """Under bf16-mixed on a CPU the update stays one fused AdamW kernel and gradient clipping still applies (Lightning
    itself refuses to clip a fused optimizer under any autocast): the gradients the update uses have the clipped
    norm."""
    module = TrainingModule(tiny_image_vae(), lr_schedule="constant")
    g = torch.Generator().manual_seed(0)
    data = [{m: torch.rand(3, 8, 8, generator=g) for m in ("m0", "m1", "m2")} for _ in range(8)]
    norms = _GradNorms()
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1e-3, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[norms], default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    assert trainer.optimizers[0].defaults["fused"]
    assert len(norms.before) == 2 and min(norms.before) > 0.1  # far above the clip: clipping has work to do
    assert norms.after == pytest.approx([1e-3, 1e-3], rel=1e-3)
