"""The text modality: tokenizers (in memory and from local folders, never the hub), the BERT expert and the GPT-2
decoder (padding, z-conditioning, the teacher-forced NLL, generation), captioned PolyDigits, the text judges, and
the commands end to end on a tiny captioned run."""

import json
import os
import re

import numpy as np
import pytest
import torch
import yaml

from decoders import Observed, SamplingSettings, TextDecoder
from decoders.sampling import TextSampling
from diffmvae.data import PolyDigitsDataModule
from diffmvae.data.captions import TEMPLATES, WORDS, captions_for, colour_name, parse_digit
from diffmvae.data.text import load_tokenizer, train_tokenizer
from diffmvae.evaluation.classifier import ParserJudge, fit_text_classifier, predict
from diffmvae.io import DiffMVAEError
from encoders import TextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BERT = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
GPT2 = {"vocab_size": 40, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 16}
TEXTS = ["a handwritten seven on a dark blue background", "the digit 3 drawn over light grey texture", "number two ; the backdrop looks dark green"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=40)


def test_in_memory_tokenizer_round_trips_and_cuts_long_texts(tokenizer):
    batch = tokenizer.encode(TEXTS, max_length=12)
    assert batch["input_ids"].shape == (3, 12) and batch["input_ids"][0, 0] == tokenizer.bos_id
    assert tokenizer.decode(batch["input_ids"]) == [t if len(t.split()) <= 10 else " ".join(t.split()[:10]) for t in TEXTS]
    lengths = batch["attention_mask"].sum(1)
    assert lengths.tolist() == [min(len(t.split()) + 2, 12) for t in TEXTS]
    assert (batch["input_ids"][torch.arange(3), lengths - 1] == tokenizer.eos_id).all()  # a cut text still ends with [EOS]
    assert tokenizer.decode(tokenizer.encode(["an unseen word"], 8)["input_ids"]) == ["[UNK] [UNK] [UNK]"]


def test_local_tokenizer_folders_load_and_hub_names_are_refused(tmp_path, tokenizer):
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer.tokenizer, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]")
    wrapped.save_pretrained(tmp_path / "ours")
    loaded = load_tokenizer(tmp_path / "ours")
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    assert torch.equal(loaded.encode(TEXTS, 12)["input_ids"], tokenizer.encode(TEXTS, 12)["input_ids"])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "seven", "digit"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "bert_saved")  # a BERT tokenizer folder
    bert = load_tokenizer(tmp_path / "bert_saved")
    assert (bert.bos_id, bert.eos_id, bert.pad_id) == (2, 3, 0)  # [CLS] / [SEP] / [PAD]
    assert bert.decode(bert.encode(["a seven"], 6)["input_ids"]) == ["a seven"]
    with pytest.raises(DiffMVAEError, match="'bert-base-uncased' is not a local directory; diffmvae never downloads"):
        load_tokenizer("bert-base-uncased")
    with pytest.raises(ValueError, match="TextEncoder pretrained .bert-base-uncased. is not a local directory"):
        TextEncoder(8, pretrained="bert-base-uncased")


def test_text_encoder_respects_padding_and_loads_a_local_pretrained_folder(tmp_path, tokenizer):
    torch.manual_seed(0)
    batch = tokenizer.encode(TEXTS, max_length=12)
    for pooling in ("cls", "mean"):
        enc = TextEncoder(8, config=BERT, pooling=pooling).eval()
        mu, logvar = enc(batch)
        assert mu.shape == logvar.shape == (3, 8) and torch.isfinite(mu).all()
        garbage = {"input_ids": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7), "attention_mask": batch["attention_mask"]}
        torch.testing.assert_close(enc(garbage)[0], mu)  # padded positions are never read
        longer = tokenizer.encode(TEXTS, max_length=16)
        torch.testing.assert_close(enc(longer)[0], mu, atol=1e-5, rtol=1e-5)
    enc.bert.save_pretrained(tmp_path / "bert")
    again = TextEncoder(8, pretrained=str(tmp_path / "bert"), pooling="mean").eval()
    again.head.load_state_dict(enc.head.state_dict())
    torch.testing.assert_close(again(batch)[0], mu)
    with pytest.raises(ValueError, match="exactly one of pretrained"):
        TextEncoder(8)


def test_text_decoder_nll_is_the_token_cross_entropy_and_reads_z(tokenizer):
    torch.manual_seed(0)
    batch = tokenizer.encode(TEXTS, max_length=12)
    z = torch.randn(3, 8)
    for inject in ("embedding", "prefix", "both"):
        dec = TextDecoder(8, config=GPT2, inject=inject, max_length=12, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id).bind("text").eval()
        nll = dec.nll(z, batch)
        logits = dec.logits(z, batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1])
        logp = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        torch.testing.assert_close(nll, -(logp * batch["attention_mask"][:, 1:]).sum(1))
        assert not torch.allclose(dec.nll(torch.randn(3, 8), batch), nll)  # z changes the text's likelihood
        terms = dec.loss(z, Observed({"text": batch}, torch.ones(3, 1, dtype=torch.bool), ("text",)))
        assert set(terms) == {"text/nll"}


def test_text_decoder_learns_a_caption_from_z_and_generates_it(tokenizer):
    """A few hundred steps on two captions tied to two latents: greedy decoding then writes each caption back."""
    torch.manual_seed(0)
    batch = tokenizer.encode(TEXTS[:2], max_length=12)
    z = torch.tensor([[2.0] * 8, [-2.0] * 8])
    dec = TextDecoder(8, config=GPT2, max_length=12, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id).bind("text")
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    for _ in range(150):
        loss = dec.nll(z, batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    given = Observed({}, torch.zeros(2, 1, dtype=torch.bool), ("text",))
    with torch.no_grad():
        out = dec.generate(z, given, targets=["text"])["text"]
    assert tokenizer.decode(out["input_ids"]) == TEXTS[:2]
    assert torch.equal(out["attention_mask"], batch["attention_mask"])


def test_sampled_generation_is_seeded_and_stops_at_the_length_limit(tokenizer):
    torch.manual_seed(0)
    z = torch.randn(6, 8)
    given = Observed({}, torch.zeros(6, 1, dtype=torch.bool), ("text",))

    torch.manual_seed(1)
    dec = TextDecoder(8, config=GPT2, max_length=8, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id).bind("text").eval()

    def gen(seed, **kw):  # the settings are a value passed per call; the decoder holds none
        with torch.no_grad():
            return dec.generate(z, given, targets=["text"], sampling=SamplingSettings(text=TextSampling(**kw)),
                                generator=torch.Generator().manual_seed(seed))["text"]

    a, b, c = gen(0, strategy="sample"), gen(0, strategy="sample"), gen(1, strategy="sample")
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    assert torch.equal(gen(0, strategy="sample", top_k=1)["input_ids"], gen(0)["input_ids"])  # top-1 sampling is greedy
    assert torch.equal(gen(3, strategy="sample", top_p=1e-6)["input_ids"], gen(0)["input_ids"])  # so is a tiny nucleus
    for out in (a, c):  # every text ends with [EOS] within max_length, then padding
        length = out["attention_mask"].sum(1)
        assert (out["input_ids"][torch.arange(6), length - 1] == tokenizer.eos_id).all() and (length <= 8).all()
    with pytest.raises(ValueError, match="text sampling needs strategy"):
        TextSampling(top_p=0.0)
    assert SamplingSettings().replace(text={"top_p": 0.5}).text == TextSampling(top_p=0.5)


def test_captioned_polydigits_is_deterministic_varied_and_names_the_digit():
    data = PolyDigitsDataModule(num_modalities=2, captions=True, train_length=400, max_length=20)
    base = data.polydigits("train")
    captions = captions_for(base, 0)
    assert captions == captions_for(data.polydigits("train"), 0) and captions != captions_for(base, 1)
    assert [parse_digit(c) for c in captions] == base.labels.tolist()
    assert any(w in c.split() for c in captions for w in WORDS) and any(c.split()[i].isdigit() for c in captions for i in range(len(c.split())))
    patterns = [re.compile("^" + re.escape(t).replace(r"\{d\}", r"(\w+)").replace(r"\{c\}", r"(\w+ \w+)") + "$") for t in TEMPLATES]
    used = {next(i for i, p in enumerate(patterns) if p.match(c)) for c in captions}
    assert len(used) == len(TEMPLATES)
    assert len({c.split(" ")[-1] for c in captions}) > 2
    item = data.dataset("test")[3]
    assert set(item) == {"m0", "m1", "text", "label"} and item["text"]["input_ids"].shape == (20,)
    assert data.specs["text"].kind == "text" and data.specs["text"].num_classes == data.tokenizer.vocab_size
    assert colour_name(torch.tensor([0.1, 0.1, 0.6])) == "dark blue" and colour_name(torch.tensor([0.8, 0.8, 0.8])) == "light grey"
    assert parse_digit("nothing here") == -1 and parse_digit("a 7 and a two") == 7


def test_text_judges_read_real_captions():
    data = PolyDigitsDataModule(num_modalities=1, captions=True, train_length=600, max_length=20)
    from diffmvae.data.batches import collate_split

    train, test = collate_split(data.dataset("train")), collate_split(data.dataset("test"))
    clf = fit_text_classifier(train["text"], train["label"], data.tokenizer.vocab_size, epochs=10)
    assert (predict(clf, test["text"]) == test["label"]).float().mean() > 0.95
    parser = ParserJudge(data.tokenizer.decode)
    assert (predict(parser, test["text"]) == test["label"]).all()
    blank = {k: torch.zeros_like(v[:2]) for k, v in test["text"].items()}
    assert (predict(parser, blank) == 10).all()  # a caption naming no digit never matches a label


@pytest.mark.slow
def test_captions_config_end_to_end(tmp_path):
    """The captions experiment's config, shrunk: fit, sample captions from an image and images from a caption (strings
    in samples.npz, captions in the grid), and evaluate with both text judges and the token NLL."""
    from pathlib import Path

    from tiny_run import write_config

    from diffmvae.commands.main import main

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "experiments/polydigits/captions.yaml").read_text())
    cfg["trainer"]["max_steps"] = 4
    cfg["trainer"]["limit_val_batches"] = 1
    cfg["data"]["init_args"].update(train_length=64, batch_size=16)
    args = cfg["model"]["init_args"]["model"]["init_args"]
    args["encoders"]["text"]["init_args"]["config"].update(hidden_size=16, intermediate_size=32)
    args["decoders"]["text"]["init_args"]["config"].update(n_embd=16)
    path, run = write_config(tmp_path, {k: v for k, v in cfg.items() if k != "trainer"} | {"trainer": {**cfg["trainer"], "callbacks": []}})
    assert main(["fit", "--config", str(path)]) == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "5", "--out", str(tmp_path / "s")]) == 0
    with np.load(tmp_path / "s" / "samples.npz") as f:
        assert f["text"].shape == (5,) and f["text/input_ids"].shape == (5, 20) and f["text"].dtype.kind == "U"
        greedy = f["text/input_ids"]
        assert json.loads(str(f["sampling"]))["settings"]["text"]["strategy"] == "greedy"
    # text settings are sampling settings: passed per command, recorded, and they change the draw
    assert main(["sample", "--ckpt", str(ckpt), "--given", "m0", "--n", "5", "--out", str(tmp_path / "s2"), "--text_strategy", "sample",
                 "--temperature", "3"]) == 0
    with np.load(tmp_path / "s2" / "samples.npz") as f:
        assert json.loads(str(f["sampling"]))["settings"]["text"] == {"strategy": "sample", "temperature": 3.0, "top_k": 0, "top_p": 1.0}
        assert not np.array_equal(f["text/input_ids"], greedy)
    assert main(["sample", "--ckpt", str(ckpt), "--given", "text", "--n", "5", "--out", str(tmp_path / "t")]) == 0
    with np.load(tmp_path / "t" / "samples.npz") as f:
        assert f["m0"].shape == (5, 3, 28, 28) and f["text"].shape == (5,)
    clf_cfg = tmp_path / "clf.yaml"
    clf_cfg.write_text(yaml.safe_dump({"data": cfg["data"], "epochs": 1}))
    assert main(["classifiers", "fit", "--config", str(clf_cfg), "--out", str(tmp_path / "clf.pt")]) == 0
    assert main(["evaluate", "--ckpt", str(ckpt), "--out", str(tmp_path / "e"), "--n_samples", "8", "--classifiers", str(tmp_path / "clf.pt"),
                 "--probe_train", "16", "--prior", "gaussian"]) == 0
    summary = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert set(summary["text_nll_per_token"]) == {"text"} and summary["text_nll_per_token"]["text"] > 0
    rows = (tmp_path / "e" / "metrics.csv").read_text()
    assert "text@parser" in rows and ",text," in rows


def test_the_cub_text_config_builds_from_local_pretrained_folders(tmp_path):
    """experiments/cub/diffmvae_star.yaml (BERT / GPT-2 from local folders, latent 768), with tiny saved models in place of
    the pretrained ones: both text modules load and map a caption to a 768-d expert and back to a likelihood."""
    from pathlib import Path

    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    from decoders import Decoder
    from diffmvae.store.build import build
    from encoders import Encoder

    BertModel(BertConfig(**BERT)).save_pretrained(tmp_path / "bert")
    GPT2LMHeadModel(GPT2Config(**GPT2, bos_token_id=3, eos_token_id=3)).save_pretrained(tmp_path / "gpt2")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "experiments/cub/diffmvae_star.yaml").read_text())
    args = cfg["model"]["init_args"]["model"]["init_args"]
    module = cfg["model"]["init_args"]  # the paper's weighting: KL weight 1e-5 on terms averaged over dimensions
    assert args["latent_dim"] == 768 and module["beta"] == 1e-5 and module["likelihood_reduction"] == "mean" and "term_weights" not in module
    enc_cfg, dec_cfg = args["encoders"]["text"], args["decoders"]["text"]
    enc_cfg["init_args"]["pretrained"], dec_cfg["init_args"]["pretrained"] = str(tmp_path / "bert"), str(tmp_path / "gpt2")
    dec_cfg["init_args"].update(bos_id=2, eos_id=3, pad_id=0, max_length=12)
    built = build({"encoder": enc_cfg, "decoder": dec_cfg}, {"encoder": Encoder, "decoder": Decoder}, "the CUB config")
    encoder, decoder = built["encoder"], built["decoder"].bind("text")
    batch = train_tokenizer(TEXTS, vocab_size=40).encode(TEXTS, 12)
    mu, _ = encoder(batch)
    assert mu.shape == (3, 768) and decoder.nll(mu, batch).shape == (3,)


def test_a_separate_encoder_tokenizer_feeds_the_encoder(tmp_path, tokenizer):
    """Optimus tokenizes a caption twice (BERT's vocabulary for the encoder, GPT-2's for the decoder): the data carries
    both and the encoder reads its own ids."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for c in captions_for(PolyDigitsDataModule(num_modalities=1).polydigits("train"), 0)
                                                                     for w in c.split()})]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "bert")
    data = PolyDigitsDataModule(num_modalities=1, captions=True, encoder_tokenizer=str(tmp_path / "bert"), max_length=20)
    item = data.dataset("test")[0]["text"]
    assert set(item) == {"input_ids", "attention_mask", "encoder_input_ids", "encoder_attention_mask"}
    assert item["encoder_input_ids"][0] == 2 and not torch.equal(item["encoder_input_ids"], item["input_ids"])
    assert set(data.specs["text"].null()) == set(item)
    torch.manual_seed(0)
    enc = TextEncoder(4, config={**BERT, "vocab_size": len(words), "max_position_embeddings": 32}).eval()
    batch = {k: v[None] for k, v in item.items()}
    mu = enc(batch)[0]
    torch.testing.assert_close(enc({**batch, "input_ids": torch.zeros_like(batch["input_ids"])})[0], mu)  # decoder ids unused
    assert not torch.allclose(enc({**batch, "encoder_input_ids": batch["encoder_input_ids"].flip(1)})[0], mu)
