"""The SST2-1k preset: the GLUE ``train.tsv`` reader, tokenization and padding, the Transformer,
and a short end-to-end run of ``subspace-optim reproduce --setup sst2-1k-transformer`` from a
generated GLUE-format file in a temporary folder."""

from __future__ import annotations

import json
import random
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import subspace_optim as so
from subspace_optim.__main__ import main
from subspace_optim.experiments import half_sum_mse, load_setup, setups
from subspace_optim.experiments.data import DataUnavailableError
from subspace_optim.experiments.models import TransformerClassifier
from subspace_optim.experiments.sst2 import WORD_LEVEL, TSVFormatError, load_sst2, read_sst2_tsv

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the a film movie good bad dull gem funny flat , . love hate story plot".split()


def write_tsv(folder: Path, rows: int, *, seed: int = 0, sub: bool = True) -> Path:
    """A GLUE-format SST-2 ``train.tsv`` of ``rows`` short sentences (labels alternate)."""
    r = random.Random(seed)
    path = folder / "SST-2" / "train.tsv" if sub else folder / "train.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"]
    for i in range(rows):
        words = " ".join(r.choice(WORDS) for _ in range(r.randint(1, 6)))
        lines.append(f"{words} \t{i % 2}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------ the reader
def test_reader_takes_the_first_n_rows_and_finds_columns_by_name(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("idx\tLabel\tsentence\r\n0\t1\tgood\r\n\n1\t0\tbad \r\n2\t1\tfine\r\n")
    assert read_sst2_tsv(path, n=2) == (["good", "bad "], [1, 0])
    with pytest.warns(UserWarning, match="found 3 sentences, fewer than the 1000"):
        sentences, labels = read_sst2_tsv(path)
    assert labels == [1, 0, 1] and len(sentences) == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("text\tlabel\ngood\t1\n", "line 1: expected a header with the columns 'sentence'"),
        ("good film\t1\nbad\t0\n", "line 1: expected a header"),  # no header line
        ("sentence\tlabel\ngood\t1\nbad\t2\n", "line 3: label '2' is not 0 or 1"),
        ("sentence\tlabel\ngood\tpositive\n", "label 'positive' is not 0 or 1"),
        ("sentence\tlabel\ngood\t1\t7\n", "line 2: 3 tab-separated fields, the header has 2"),
        ("sentence\tlabel\ngood, 1\n", "line 2: 1 tab-separated fields"),
        ("sentence\tlabel\n", "no data rows"),
    ],
)
def test_reader_rejects_bad_files_clearly(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "train.tsv"
    path.write_text(text)
    with pytest.raises(TSVFormatError, match=needle):
        read_sst2_tsv(path)


# ----------------------------------------------------------------- tokens and padding
def test_every_sentence_is_padded_to_one_length_with_a_word_level_vocabulary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nA gem, a GEM.\t1\n\t0\nflat\t0\n")
    data = load_sst2(3, data_dir=tmp_path, tokenizer="word")
    assert data.tokenizer == WORD_LEVEL and data.source == str(path)
    assert data.inputs.shape == (3, 2, 6) and data.inputs.dtype == torch.int64
    ids, mask = data.inputs[:, 0], data.inputs[:, 1]
    assert mask.sum(1).tolist() == [6, 1, 1]  # the empty sentence keeps one <unk> token
    assert ids[1, 0] == 1 and (ids[mask == 0] == 0).all()  # 1 = unknown, 0 = padding
    assert ids[0, 0] == ids[0, 3] and ids[0, 1] == ids[0, 4]  # lower-cased: "a", "gem"
    assert data.vocab_size == int(ids.max()) + 1 == 2 + 5  # pad, unk, a, gem, ",", ".", flat
    assert data.targets.tolist() == [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    short = load_sst2(3, data_dir=tmp_path, tokenizer="word", max_len=2)
    assert short.inputs.shape == (3, 2, 2)


def test_the_distilbert_tokenizer_is_used_and_recorded_when_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {}

    class FakeTokenizer:
        vocab_size, pad_token_id = 30522, 0

        def __call__(self, texts, truncation, max_length):  # type: ignore[no-untyped-def]
            return {"input_ids": [[101, *range(1000, 1000 + len(t.split())), 102] for t in texts]}

    def from_pretrained(name, local_files_only):  # type: ignore[no-untyped-def]
        calls.update(name=name, local=local_files_only)
        return FakeTokenizer()

    fake = types.SimpleNamespace(
        AutoTokenizer=types.SimpleNamespace(from_pretrained=from_pretrained)
    )
    monkeypatch.setitem(sys.modules, "transformers", fake)
    write_tsv(tmp_path, 5)
    data = load_sst2(5, data_dir=tmp_path)
    assert data.tokenizer == "distilbert-base-uncased" and data.vocab_size == 30522
    assert calls == {"name": "distilbert-base-uncased", "local": True}  # no download
    assert (data.inputs[:, 0, 0] == 101).all()
    assert load_sst2(5, data_dir=tmp_path, tokenizer="word").tokenizer == WORD_LEVEL


def test_missing_data_says_which_file_to_put_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DataUnavailableError, match=r"SST-2/train\.tsv") as err:
        load_sst2(data_dir=tmp_path / "none")
    assert "--download" in str(err.value) and "datasets" in str(err.value)
    monkeypatch.setitem(sys.modules, "datasets", None)  # "not installed"
    with pytest.raises(DataUnavailableError, match="pip install datasets"):
        load_sst2(data_dir=tmp_path / "none", download=True)


def test_the_transformer_output_of_an_example_does_not_depend_on_its_batch(
    tmp_path: Path,
) -> None:
    write_tsv(tmp_path, 12, sub=False)
    setup = load_setup("sst2-1k-transformer", data_dir=tmp_path, seed=0)
    X, Y = setup.train_data
    model = setup.model
    with torch.no_grad():
        whole = model(X)
        pieces = torch.cat([model(X[i : i + 5]) for i in range(0, 12, 5)])
    torch.testing.assert_close(pieces, whole, rtol=1e-5, atol=1e-6)
    # so the Hessian product is the same, whatever the micro-batches
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    one = so.HessianOperator(model, half_sum_mse, (X, Y)).matmat(v)
    chunked = so.HessianOperator(model, half_sum_mse, (X, Y), chunk_size=5).matmat(v)
    assert float((chunked - one).norm()) <= 1e-4 * float(one.norm())


def test_transformer_architecture_is_the_papers() -> None:
    model = TransformerClassifier(100, 16, generator=torch.Generator().manual_seed(0))
    layers = model.encoder.layers
    assert len(layers) == 2 and layers[0].self_attn.num_heads == 8
    assert layers[0].linear1.out_features == 2048 and model.embedding.embedding_dim == 64
    assert layers[0].dropout.p == 0.0 and model.head.out_features == 2
    again = TransformerClassifier(100, 16, generator=torch.Generator().manual_seed(0))
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # the private generator reproduces the weights
    with pytest.raises(ValueError, match="divisible by heads"):
        TransformerClassifier(10, 4, width=60)


# ----------------------------------------------------------------------- end to end
def test_reproduce_runs_the_preset_end_to_end_from_a_glue_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the preset's own solver, with a cheaper first (cold) solve: the default cold Lanczos
    # takes ~125 products for this 563k-parameter model, a fixed 8 power steps take ~60
    cheap = so.WarmRefresh(extra=1, cold=so.PowerIteration(max_iter=8))
    monkeypatch.setitem(setups.SST2_DEFAULTS, "solver", cheap)
    write_tsv(tmp_path / "data", 10)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            ["reproduce", "--setup", "sst2-1k-transformer", "--data-dir", str(tmp_path / "data"),
             "--optimizers", "sgd", "--steps", "2", "--switch", "1", "--track-every", "10",
             "--num-extra", "0", "--no-figures", "--quiet", "--out", str(out)]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "found 10 sentences, fewer than the 1000" in captured.err  # said, and went on
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setup"] == "sst2-1k-transformer"
    cfg = summary["config"]
    assert cfg["k"] == 2 and cfg["num_examples"] == 10 and cfg["batch_size"] == 50
    assert cfg["lr"] == {"sgd": 0.001, "sam": 0.001}
    info = cfg["setup_info"]
    assert info["tokenizer"] == WORD_LEVEL and info["sentences"] == 10
    assert info["source"].endswith("SST-2/train.tsv")
    (fam,) = summary["families"]
    assert fam["switch_step"] == 1 and set(fam["runs"]) == {"base", "dom", "bulk"}
    assert "tokenizer word-level" in (out / "summary.md").read_text()


def test_reproduce_without_the_file_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(
        ["reproduce", "--quiet", "--setup", "sst2-1k-transformer", "--data-dir",
         str(tmp_path / "nothing"), "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "SST-2/train.tsv" in err and "--download" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\ngood\t3\n")
    code = main(
        ["reproduce", "--quiet", "--setup", "sst2-1k-transformer", "--data-dir", str(bad),
         "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "label '3' is not 0 or 1" in err
    assert not out.exists() and not list(tmp_path.glob("**/*.partial"))
