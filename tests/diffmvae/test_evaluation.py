"""The evaluation protocol on tiny data: coherence, Fréchet distance, latent probes, the report and the CLI."""

import json
import math

import pandas as pd
import pytest
import torch
import yaml
from tiny_run import TINY, make_polymnist, vae_args, write_config

from diffmvae.commands.main import main
from diffmvae.evaluation import FeatureExtractor, ImageClassifier, frechet_distance, predict, unconditional_coherence
from diffmvae.evaluation.classifier import Judge
from diffmvae.evaluation.suite import conditional_metrics, probe_accuracy, subsets_by_size
from diffmvae.io import DiffMVAEError
from diffmvae.model.subsets import subset_mask


def tiny_classifier(seed):
    torch.manual_seed(seed)
    return ImageClassifier(num_classes=10, in_channels=3, image_size=8, feature_dim=16).eval()


def paired_data(n=40, names=("m0", "m1", "m2"), seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    base = torch.rand(10, 3, 8, 8, generator=g)
    data = {m: (base[labels] + 0.3 * torch.rand(n, 3, 8, 8, generator=g)).clamp(0, 1) for m in names}
    return data, labels


class PairedDataOracle:
    """A 'model' whose generation returns the true paired data of the observed examples."""

    def __init__(self, data):
        self.data, self.modalities = data, tuple(data)
        self.subset_mask = subset_mask(len(data), "mopoe")
        self.keys = data[self.modalities[0]].flatten(1)

    def device_of(self):
        return torch.device("cpu")

    def can_generate(self, given):
        return True

    def generate(self, given, n, *, sampling=None, generator=None, prior=None):
        m, x = next(iter(given.items()))
        rows = torch.cdist(x.flatten(1), self.data[m].flatten(1)).argmin(1)
        return {name: (given[name] if name in given else v[rows]) for name, v in self.data.items()}


def test_true_paired_data_scores_the_classifier_accuracy():
    data, labels = paired_data()
    classifiers = {m: tiny_classifier(i) for i, m in enumerate(data)}
    extractors = {m: FeatureExtractor(c) for m, c in classifiers.items()}
    subsets = subsets_by_size(list(data), max_subsets=10, seed=0)
    rows = conditional_metrics(PairedDataOracle(data), data, labels, subsets, classifiers, extractors, seed=0, progress=False)
    accuracy = {m: (predict(c, data[m]) == labels).float().mean().item() for m, c in classifiers.items()}
    coherence = [r for r in rows if r["metric"] == "coherence" and r["target"] != "mean"]
    assert {(r["k"], r["target"]) for r in coherence} == {(k, t) for k in (1, 2) for t in data}
    for r in coherence:
        assert r["value"] == pytest.approx(accuracy[r["target"]], abs=1e-6)
    fd = [r for r in rows if r["metric"] == "fd" and r["target"] != "mean"]
    assert all(abs(r["value"]) < 1e-2 for r in fd)  # generated == real: the distance vanishes


def test_frechet_distance_is_zero_for_real_and_grows_with_noise():
    data, _ = paired_data(n=300)
    real = data["m0"]
    extractor = FeatureExtractor(tiny_classifier(0))
    distances = [frechet_distance(real, (real + s * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1), extractor)
                 for s in (0.0, 0.05, 0.2, 0.5)]
    assert abs(distances[0]) < 1e-3
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_probe_on_separable_latents_is_near_one_and_chance_on_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g).numpy()
    centres = 6 * torch.randn(3, 8, generator=g)
    z = (centres[y] + torch.randn(600, 8, generator=g)).numpy()
    assert probe_accuracy(z[:400], y[:400], z[400:], y[400:]) > 0.97
    noise = torch.randn(600, 8, generator=g).numpy()
    assert probe_accuracy(noise[:400], y[:400], noise[400:], y[400:]) < 0.6


def test_subsets_by_size_enumerates_or_samples():
    names = [f"m{k}" for k in range(6)]
    full = subsets_by_size(names, max_subsets=100, seed=0)
    assert [len(full[k]) for k in range(1, 6)] == [math.comb(6, k) for k in range(1, 6)]
    capped = subsets_by_size(names, max_subsets=4, seed=1)
    assert [len(capped[k]) for k in range(1, 6)] == [4, 4, 4, 4, 4]
    assert capped == subsets_by_size(names, max_subsets=4, seed=1)
    assert all(set(s) <= set(names) and len(s) == k for k, ss in capped.items() for s in ss)


def test_unconditional_coherence_counts_agreement():
    class Constant(Judge):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((x.shape[0],), self.c), 10).float()

    samples = {m: torch.zeros(5, 3, 8, 8) for m in ("a", "b", "c")}
    assert unconditional_coherence(samples, {"a": Constant(1), "b": Constant(1), "c": Constant(1)}) == {"all": 1.0, "at_least_2": 1.0}
    out = unconditional_coherence({**samples, "d": samples["a"]}, {"a": Constant(1), "b": Constant(1), "c": Constant(2), "d": Constant(3)})
    assert out == {"all": 0.0, "at_least_2": 1.0, "at_least_3": 0.0}


def test_evaluate_writes_json_csv_md_and_plot(trained, classifier_file, tmp_path):
    _, ckpt = trained
    out = tmp_path / "eval"
    argv = ["evaluate", "--ckpt", str(ckpt), "--ckpt", str(ckpt), "--names", "a,b", "--out", str(out), "--n_samples", "12",
            "--seed", "5", "--classifiers", str(classifier_file), "--probe_train", "16", "--prior", "gaussian"]
    assert main(argv) == 0
    summaries = json.loads((out / "metrics.json").read_text())
    assert [s["model"] for s in summaries] == ["a", "b"]
    s = summaries[0]
    assert set(s["coherence"]["conditional"]) == {"1", "2"} and set(s["fd"]["conditional"]) == {"1", "2"}
    # both Fréchet distances, the label-free one fitted on real training pixels, conditional and unconditional
    assert set(s["fd_pca"]["conditional"]) == {"1", "2"} and s["fd_pca"]["unconditional"] > 0 and "PCA of pixels" in s["fd_pca_features"]
    assert s["fd_pca"] == summaries[1]["fd_pca"]
    assert set(s["latent_probe"]) == {"1", "2", "3"}
    assert s["n_samples"] == 12 and s["seed"] == 5 and s["prior"] == "gaussian"
    assert all(0 <= v <= 1 for v in s["coherence"]["conditional"].values()) and math.isfinite(s["elbo"])
    assert s["coherence"] == summaries[1]["coherence"]  # same checkpoint, same seed: same numbers
    table = pd.read_csv(out / "metrics.csv")
    assert list(table.columns) == ["model", "metric", "k", "target", "value"]
    assert {"coherence", "fd", "fd_pca", "coherence_unconditional", "fd_unconditional", "fd_pca_unconditional", "latent_probe", "elbo",
            "objective", "term/kl"} <= set(table["metric"])
    # feed-forward likelihoods bound -log p(x|z): the ELBO is reported, and with beta = 1 it is minus the objective
    assert s["elbo"] == pytest.approx(-s["objective"], rel=1e-5) and set(s["terms"]) == {"kl", "m0/nll", "m1/nll", "m2/nll"}
    assert s["sampling"]["settings"]["exact"] is True and s["sampling"]["decoders"] == {}
    assert "| metric | k | a | b |" in (out / "metrics.md").read_text()
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_thread_split_reaches_every_sampling_call_and_is_recorded(trained, classifier_file, tmp_path, monkeypatch):
    """``--thread_split 2`` reaches the sampler of the conditional and the unconditional part (a setting dropped on the
    way would leave 1 there) and is written into the settings of metrics.json; 0 is refused in one line."""
    import diffmvae.evaluation.suite as suite

    real, seen = suite.generate_from_subset, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("thread_split", 1))
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "generate_from_subset", spy)
    _, ckpt = trained
    out = tmp_path / "eval"
    argv = ["evaluate", "--ckpt", str(ckpt), "--out", str(out), "--n_samples", "6", "--classifiers", str(classifier_file),
            "--prior", "gaussian", "--parts", "conditional,unconditional", "--max_subsets", "1", "--thread_split", "2"]
    assert main(argv) == 0
    assert len(seen) >= 3 and set(seen) == {2}  # a subset of each size k = 1, 2, and the unconditional samples
    assert json.loads((out / "metrics.json").read_text())["settings"]["thread_split"] == 2  # one model: one summary
    assert main([*argv[:4], str(tmp_path / "e0"), "--thread_split", "0"]) == 2


def test_evaluate_refuses_different_modality_sets(trained, tmp_path, capsys):
    _, ckpt = trained
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["data"]["init_args"]["num_modalities"] = 2
    for side in ("encoders", "decoders"):
        vae_args(cfg)[side].pop("m2")
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    assert main(["evaluate", "--ckpt", str(ckpt), "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different modality sets" in err and not (tmp_path / "e").exists()


def test_evaluate_fails_in_one_line_when_dataset_files_are_missing(tmp_path, capsys):
    root = make_polymnist(tmp_path / "polymnist")
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    cfg["data"] = {"class_path": "diffmvae.data.PolyMNISTDataModule", "init_args": {"root": str(root), "num_modalities": 3, "batch_size": 4}}
    make_polymnist(root, num_modalities=3)
    path, run = write_config(tmp_path, cfg)
    assert main(["fit", "--config", str(path)]) == 0
    for f in (root / "test" / "m1").iterdir():
        f.unlink()
    (root / "test" / "m1").rmdir()
    assert main(["evaluate", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"PolyMNIST folder {root / 'test' / 'm1'} does not exist" in err


def test_classifier_file_errors(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--ckpt", "missing.ckpt", "--out", str(tmp_path / "e")]) == 2
    assert "missing.ckpt does not exist" in capsys.readouterr().err
    assert main(["classifiers", "train"]) == 2
    assert "the only classifiers command is `fit`" in capsys.readouterr().err
    assert main(["classifiers", "fit", "--data.class_path", "diffmvae.data.PolyDigitsDataModule", "--epochs", "x"]) == 2
    assert "epochs" in capsys.readouterr().err


def test_multilabel_classifier_and_coherence():
    """Attribute vectors: BCE training, 0/1 predictions compared elementwise, agreement on whole vectors."""
    from diffmvae.evaluation import conditional_coherence, fit_classifier

    g = torch.Generator().manual_seed(0)
    attrs = torch.randint(0, 2, (200, 3), generator=g)
    images = attrs.float()[:, :, None, None].expand(-1, 3, 8, 8) + 0.05 * torch.randn(200, 3, 8, 8, generator=g)
    clf = fit_classifier(images, attrs, epochs=30, batch_size=50, lr=5e-3, progress=False)
    assert clf.multilabel and clf.config["num_classes"] == 3
    pred = predict(clf, images)
    assert pred.shape == (200, 3) and set(pred.unique().tolist()) <= {0, 1}
    assert conditional_coherence({"a": images}, attrs, [], {"a": clf})["a"] > 0.95
    flipped = (1 - attrs).float()[:, :, None, None].expand(-1, 3, 8, 8)
    out = unconditional_coherence({"a": images, "b": images, "c": flipped}, {"a": clf, "b": clf, "c": clf})
    assert out["all"] < 0.1 and out["at_least_2"] == 1.0


def test_bits_per_dim_reported_for_decoders_that_bound_it(image_vae):
    """A VDM decoder bounds the 8-bit likelihood, so each of its modalities gets bits per dimension (positive, and
    the same for the same seed); feed-forward and DDPM decoders give none."""
    from decoders import DiffusionDecoder
    from decoders.diffusion import DDIM, DDPMProcess, VDMProcess
    from diffmvae.evaluation.suite import bits_per_dim
    from diffmvae.model.vae import MultimodalVAE
    from encoders import ConvImageEncoder

    def model(process):
        torch.manual_seed(0)
        dec = DiffusionDecoder(4, process, image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,), mean_hidden=8,
                               modalities=["a", "b"])
        return MultimodalVAE({m: ConvImageEncoder(4, image_size=8, channels=(4,), hidden_dim=8) for m in ("a", "b")}, {"d": dec}, 4)

    assert bits_per_dim(image_vae, {m: torch.rand(5, 3, 8, 8) for m in image_vae.modalities}, seed=0) == {}
    data = {m: torch.rand(6, 3, 8, 8) for m in ("a", "b")}
    assert bits_per_dim(model(DDPMProcess()), data, seed=0) == {}
    vdm = model(VDMProcess(sampler=DDIM(2)))
    bpd = bits_per_dim(vdm, data, seed=0)
    # per dimension, in bits: an untrained model reads ~14 here; the same bound in nats per example would be ~1900
    assert set(bpd) == {"a", "b"} and all(0 < v < 100 and math.isfinite(v) for v in bpd.values())
    assert bits_per_dim(vdm, data, seed=0) == bpd


def test_elbo_is_reported_only_when_every_decoder_bounds_its_likelihood():
    from decoders import DiffusionDecoder
    from decoders.diffusion import DDIM, DDPMProcess, VDMProcess
    from diffmvae.evaluation.suite import elbo_on_split
    from diffmvae.model.vae import MultimodalVAE
    from encoders import ConvImageEncoder

    def model(process):
        torch.manual_seed(0)
        dec = DiffusionDecoder(4, process, image_size=8, unet_channels=(8, 8), emb_dim=16, mean_channels=(8,), mean_hidden=8,
                               modalities=["a", "b"])
        return MultimodalVAE({m: ConvImageEncoder(4, image_size=8, channels=(4,), hidden_dim=8) for m in ("a", "b")}, {"d": dec}, 4)

    data = {m: torch.rand(6, 3, 8, 8) for m in ("a", "b")}
    with torch.no_grad():
        vdm, ddpm = elbo_on_split(model(VDMProcess(sampler=DDIM(2))), data, seed=0), elbo_on_split(model(DDPMProcess()), data, seed=0)
    assert "elbo" not in ddpm and "objective" in ddpm  # DDPM's simple loss is a surrogate: no bound to report
    bound = sum(vdm[f"{m}/{k}"] for m in ("a", "b") for k in ("diffusion", "diffusion_recon", "diffusion_prior"))
    assert vdm["elbo"] == pytest.approx(-(bound + vdm["kl"]), rel=1e-5)  # the mean heads' auxiliary terms are left out
    assert vdm["objective"] > -vdm["elbo"]


def test_inception_fid_needs_a_local_file_and_the_extra(tmp_path, capsys):
    assert main(["evaluate", "--ckpt", "x.ckpt", "--out", str(tmp_path), "--inception_weights", str(tmp_path / "none.pth")]) == 2
    assert "x.ckpt does not exist" in capsys.readouterr().err
    from diffmvae.evaluation.frechet import InceptionExtractor

    with pytest.raises(DiffMVAEError, match="none.pth does not exist"):
        InceptionExtractor(tmp_path / "none.pth")
    (tmp_path / "w.pth").write_bytes(b"x")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    # Without the extra: one line naming it. With it: the weights file is read, and a file that is no weights fails.
    with pytest.raises((DiffMVAEError, RuntimeError, EOFError, OSError), match="optional 'fid' extra" if not _TORCH_FIDELITY_AVAILABLE else ""):
        InceptionExtractor(tmp_path / "w.pth")


def test_f1_and_iou_match_their_definitions():
    """Per-example F1 and IoU, averaged over examples, equal their definitions counted by hand; probabilities are
    thresholded at one half; an example empty on both sides scores 1."""
    from diffmvae.evaluation.match import f1_samples, iou

    g = torch.Generator().manual_seed(0)
    true = (torch.rand(50, 18, generator=g) < 0.4).float()
    true[:, 0] = 1  # no empty truth
    prob = torch.rand(50, 18, generator=g)
    t, p = true.bool(), prob >= 0.5
    tp, fp, fn = (t & p).sum(1).double(), (~t & p).sum(1).double(), (t & ~p).sum(1).double()
    assert f1_samples(true, prob) == pytest.approx((2 * tp / (2 * tp + fp + fn)).mean().item(), abs=1e-12)
    assert iou(true, prob) == pytest.approx((tp / (tp + fp + fn)).mean().item(), abs=1e-12)
    t, p = torch.tensor([[1.0, 1, 0, 0]]), torch.tensor([[0.9, 0.2, 0.7, 0.1]])
    assert f1_samples(t, p) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and iou(t, p) == pytest.approx(1 / 3)
    empty = torch.zeros(2, 1, 4, 4)
    assert f1_samples(empty, empty) == 1.0 and iou(empty, empty + 0.2) == 1.0 and iou(empty, empty + 0.6) == 0.0


def test_attribute_judge_thresholds_generated_probabilities():
    from diffmvae.evaluation.classifier import AttributeJudge, predict

    assert predict(AttributeJudge(), torch.tensor([[0.2, 0.7, 0.5]])).tolist() == [[0, 1, 0]]


@pytest.mark.parametrize("shape, k", [((3, 8, 8), 16), ((3, 2, 2), 64)])
def test_pixel_pca_axes_are_the_top_singular_vectors_of_the_centred_images(shape, k):
    """The fitted axes span the top right-singular subspace of the centred images (a float64 SVD, the closed form)
    to 1e-6 (the axes are stored in float32), both when fewer axes than pixels are kept (ARPACK) and when all are (full SVD); an approximate
    (randomized) solver is off by far more on this slowly decaying spectrum, and a refit repeats exactly."""
    from diffmvae.evaluation.frechet import PixelPCA

    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(1.0, 0.5, int(torch.tensor(shape).prod()))
    images = 0.5 + 0.1 * torch.randn(300, *shape, generator=g) * scale.view(*shape)
    pca = PixelPCA.fit(images, k)
    flat = images.flatten(1).double()
    _, _, vh = torch.linalg.svd(flat - flat.mean(0), full_matrices=False)
    top = vh[: pca.num_features]
    cosines = torch.linalg.svdvals(top @ pca.components.double().T)
    assert pca.num_features == min(k, flat.shape[1]) and cosines.min() > 1 - 1e-6
    assert torch.equal(PixelPCA.fit(images, k).components, pca.components)


def test_pixel_pca_frechet_distance_is_the_projected_mean_shift_when_the_spread_is_the_same():
    """The label-free space in closed form: for generated = real + a constant image, the covariances agree and the
    Fréchet distance is the squared length of the shift projected on the fitted principal axes."""
    from diffmvae.evaluation.frechet import PixelPCA

    g = torch.Generator().manual_seed(0)
    real = 0.25 + 0.5 * torch.rand(400, 3, 8, 8, generator=g)
    pca = PixelPCA.fit(real, 16)
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(16), atol=1e-5, rtol=0)  # orthonormal axes
    shift = 0.05 * torch.randn(1, 3, 8, 8, generator=g)
    expected = float(((pca.components.double() @ shift.flatten().double()) ** 2).sum())
    assert abs(frechet_distance(real, real, pca)) < 1e-4
    assert frechet_distance(real, real + shift, pca) == pytest.approx(expected, rel=1e-3)
    with pytest.raises(DiffMVAEError, match="at least 2 real images"):
        PixelPCA.fit(real[:1])
