"""SST2-1k: the first 1,000 sentences of GLUE SST-2, tokenized and padded for full-batch Hessians.

The text comes from GLUE's ``train.tsv`` (tab-separated, header ``sentence<TAB>label``,
labels 0 / 1) found under ``--data-dir`` as ``SST-2/train.tsv`` or ``train.tsv``, or, with
``download=True`` and Hugging Face ``datasets`` installed, from ``stanfordnlp/sst2``.
Tokens come from the ``distilbert-base-uncased`` tokenizer when ``transformers`` is
installed and its files are cached, else from a word-level vocabulary built from the
sentences themselves (no download); :class:`SST2Data` records which.

Every sentence is padded to one length, that of the longest in the subset, so that the
loss of an example, and with it the Hessian, does not depend on which micro-batch it lands
in.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .data import DataUnavailableError

__all__ = ["WORD_LEVEL", "SST2Data", "TSVFormatError", "load_sst2", "read_sst2_tsv"]

#: the number of sentences of the paper's SST2-1k
SST2_SIZE = 1000
#: the name :class:`SST2Data` records for the fallback tokenizer
WORD_LEVEL = "word-level"
_HF_TOKENIZER = "distilbert-base-uncased"
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


class TSVFormatError(ValueError):
    """A ``train.tsv`` that is not GLUE SST-2's format; the message names the line.

    Example:
        >>> import tempfile, pathlib
        >>> from subspace_optim.experiments.sst2 import TSVFormatError, read_sst2_tsv
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d, "train.tsv")
        ...     _ = path.write_text("sentence\\tlabel\\ngood film\\t2\\n")
        ...     try:
        ...         read_sst2_tsv(path)
        ...     except TSVFormatError as err:
        ...         print(str(err).split(": ", 1)[1])
        line 2: label '2' is not 0 or 1
    """


def read_sst2_tsv(path: str | Path, n: int = SST2_SIZE) -> tuple[list[str], list[int]]:
    """The first ``n`` ``(sentence, label)`` rows of a GLUE-format SST-2 ``train.tsv``.

    The first line must be a header naming a ``sentence`` and a ``label`` column (in any
    order; other columns are allowed and ignored). Every later non-blank line must have as
    many tab-separated fields as the header, and a label of ``0`` or ``1``. Fewer than
    ``n`` rows is not an error: a :class:`UserWarning` says how many were found.

    Args:
        path: the ``train.tsv`` file (UTF-8).
        n: how many data rows to read, from the top.

    Returns:
        ``(sentences, labels)``, two lists of the same length (at most ``n``).

    Raises:
        TSVFormatError: an empty file, a header without ``sentence`` / ``label``, a row with
            the wrong number of fields, a label outside ``{0, 1}``, or no data rows.
        FileNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile, pathlib
        >>> from subspace_optim.experiments.sst2 import read_sst2_tsv
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d, "train.tsv")
        ...     _ = path.write_text("sentence\\tlabel\\na gem \\t1\\ndull\\t0\\nfine\\t1\\n")
        ...     read_sst2_tsv(path, n=2)
        (['a gem ', 'dull'], [1, 0])
    """
    path = Path(path)
    sentences: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8", newline="") as f:
        header_line = ""
        for header_line in f:
            if header_line.strip():
                break
        if not header_line.strip():
            raise TSVFormatError(
                f"{path}: the file is empty; expected GLUE SST-2's train.tsv with the header "
                "'sentence<TAB>label'"
            )
        header = [h.strip().lower() for h in header_line.rstrip("\r\n").split("\t")]
        if "sentence" not in header or "label" not in header:
            raise TSVFormatError(
                f"{path}: line 1: expected a header with the columns 'sentence' and 'label' "
                f"(tab-separated, as in GLUE SST-2's train.tsv); found {header!r}"
            )
        i_sent, i_label = header.index("sentence"), header.index("label")
        for lineno, line in enumerate(f, start=2):
            if len(sentences) >= n:
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise TSVFormatError(
                    f"{path}: line {lineno}: {len(fields)} tab-separated fields, the header has "
                    f"{len(header)} ({', '.join(header)})"
                )
            label = fields[i_label].strip()
            if label not in ("0", "1"):
                raise TSVFormatError(f"{path}: line {lineno}: label {label!r} is not 0 or 1")
            sentences.append(fields[i_sent])
            labels.append(int(label))
    if not sentences:
        raise TSVFormatError(f"{path}: the header is there but no data rows follow")
    if len(sentences) < n:
        warnings.warn(
            f"{path}: found {len(sentences)} sentences, fewer than the {n} asked for; going on "
            f"with all {len(sentences)}",
            UserWarning,
            stacklevel=2,
        )
    return sentences, labels


@dataclass(frozen=True)
class SST2Data:
    """The tokenized subset.

    Attributes:
        inputs: ``(n, 2, L)`` int64: token ids in ``[:, 0]``, the attention mask (1 for a
            token, 0 for padding) in ``[:, 1]``; every row padded to the same ``L``.
        targets: ``(n, 2)`` one-hot labels (float32) for the MSE loss.
        labels: ``(n,)`` int64 labels.
        vocab_size: size of the token embedding the model needs.
        tokenizer: ``"distilbert-base-uncased"`` or :data:`WORD_LEVEL`.
        source: where the sentences came from (a path or the Hugging Face data set name).
    """

    inputs: Tensor
    targets: Tensor
    labels: Tensor
    vocab_size: int
    tokenizer: str
    source: str


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.lower())


def _word_level(sentences: Sequence[str], max_len: int) -> tuple[list[list[int]], int]:
    """Ids from a vocabulary of the sentences' own words (0: padding, 1: unknown)."""
    counts = Counter(w for s in sentences for w in _words(s))
    vocab = {
        w: i + 2 for i, (w, _) in enumerate(sorted(counts.items(), key=lambda x: (-x[1], x[0])))
    }
    ids = [[vocab[w] for w in _words(s)][:max_len] or [1] for s in sentences]
    return ids, len(vocab) + 2


def _hf_tokenizer(download: bool) -> object | None:
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(_HF_TOKENIZER, local_files_only=not download)
    except Exception:
        return None


def _find_tsv(data_dir: str | Path) -> Path | None:
    root = Path(data_dir).expanduser()
    for candidate in (root / "SST-2" / "train.tsv", root / "train.tsv"):
        if candidate.is_file():
            return candidate
    return None


def _download(n: int) -> tuple[list[str], list[int], str]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise DataUnavailableError(
            "SST-2: --download loads 'stanfordnlp/sst2' through Hugging Face datasets, which is "
            "not installed (pip install datasets); or put GLUE's SST-2 train.tsv under "
            "--data-dir as SST-2/train.tsv"
        ) from None
    try:
        ds = datasets.load_dataset("stanfordnlp/sst2", split="train")
    except Exception as exc:
        raise DataUnavailableError(
            f"SST-2: loading 'stanfordnlp/sst2' failed ({exc}); put GLUE's SST-2 train.tsv under "
            "--data-dir as SST-2/train.tsv instead"
        ) from None
    rows = ds.select(range(min(n, len(ds))))
    return list(rows["sentence"]), [int(v) for v in rows["label"]], "stanfordnlp/sst2"


def load_sst2(
    n: int = SST2_SIZE,
    *,
    data_dir: str | Path = "data",
    download: bool = False,
    tokenizer: str = "auto",
    max_len: int = 128,
) -> SST2Data:
    """The first ``n`` SST-2 training sentences, tokenized and padded to one length.

    Args:
        n: sentences to keep, from the top of the file (the paper: 1,000).
        data_dir: the folder holding ``SST-2/train.tsv`` or ``train.tsv``.
        download: when no file is found, load ``stanfordnlp/sst2`` through Hugging Face
            ``datasets`` (and let ``transformers`` fetch its tokenizer).
        tokenizer: ``"auto"`` (``distilbert-base-uncased`` when available, else word-level)
            or ``"word"`` (always the word-level vocabulary).
        max_len: longest token sequence kept; longer sentences are truncated.

    Returns:
        An :class:`SST2Data`; ``inputs`` has shape ``(n', 2, L)`` with ``n' <= n`` rows and
        ``L`` the longest tokenized sentence (at most ``max_len``).

    Raises:
        DataUnavailableError: no ``train.tsv`` under ``data_dir`` (and no ``download``), or
            ``download`` without ``datasets`` installed; the message says what to do.
        TSVFormatError: the file is not in GLUE SST-2's format (see :func:`read_sst2_tsv`).
        ValueError: bad ``n``, ``tokenizer`` or ``max_len``.

    Example:
        >>> import tempfile, pathlib
        >>> from subspace_optim.experiments.sst2 import load_sst2
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = pathlib.Path(d, "train.tsv").write_text(
        ...         "sentence\\tlabel\\na fine , funny film\\t1\\nflat\\t0\\n")
        ...     data = load_sst2(2, data_dir=d, tokenizer="word")
        >>> tuple(data.inputs.shape), data.inputs[1, 1].tolist(), data.tokenizer
        ((2, 2, 5), [1, 0, 0, 0, 0], 'word-level')
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of sentences; got {n!r}")
    if tokenizer not in ("auto", "word"):
        raise ValueError(f"tokenizer must be 'auto' or 'word'; got {tokenizer!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int; got {max_len!r}")
    path = _find_tsv(data_dir)
    if path is not None:
        sentences, labels = read_sst2_tsv(path, n)
        source = str(path)
    elif download:
        sentences, labels, source = _download(n)
    else:
        root = Path(data_dir).expanduser()
        raise DataUnavailableError(
            f"SST-2 was not found: put GLUE's SST-2 train.tsv (tab-separated, header "
            f"'sentence<TAB>label') at {str(root / 'SST-2' / 'train.tsv')!r} (or "
            f"{str(root / 'train.tsv')!r}), point --data-dir at its folder, or rerun with "
            "--download when Hugging Face datasets is installed (pip install datasets)"
        )
    hf = _hf_tokenizer(download) if tokenizer == "auto" else None
    if hf is not None:
        enc = hf(list(sentences), truncation=True, max_length=max_len)  # type: ignore[operator]
        ids: list[list[int]] = [list(x) for x in enc["input_ids"]]
        vocab_size, name = int(hf.vocab_size), _HF_TOKENIZER  # type: ignore[attr-defined]
        pad = int(hf.pad_token_id or 0)  # type: ignore[attr-defined]
    else:
        ids, vocab_size = _word_level(sentences, max_len)
        name, pad = WORD_LEVEL, 0
    length = max(len(x) for x in ids)
    inputs = torch.full((len(ids), 2, length), pad, dtype=torch.int64)
    inputs[:, 1] = 0
    for i, x in enumerate(ids):
        inputs[i, 0, : len(x)] = torch.tensor(x, dtype=torch.int64)
        inputs[i, 1, : len(x)] = 1
    label_t = torch.tensor(labels, dtype=torch.int64)
    targets = torch.nn.functional.one_hot(label_t, 2).to(torch.float32)
    return SST2Data(inputs, targets, label_t, vocab_size, name, source)
