"""Generate ``docs/reproduce_quick.md`` and its figures from a real ``reproduce --quick`` run.

Runs ``python -m subspace_optim reproduce --quick`` in a temporary folder, copies the three
figures it makes to ``docs/_static/reproduce/`` and turns its ``summary.md`` (the table,
the machine it ran on, the notes) into a page of the docs. Nothing in the page is typed by
hand. Run from the repository root (the outputs are committed)::

    python docs/_tools/make_reproduce_page.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
FIGURES = ("loss.png", "alignment.png", "eigenvalues.png")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "subspace_optim", "reproduce", "--quick", "--quiet"]
        subprocess.run([*command, "--out", str(out)], check=True, cwd=DOCS.parent)
        static = DOCS / "_static" / "reproduce"
        static.mkdir(parents=True, exist_ok=True)
        for name in FIGURES:
            shutil.copyfile(out / name, static / name)
        summary = (out / "summary.md").read_text(encoding="utf-8")

    lines = summary.splitlines()
    body = [line for line in lines[1:] if not line.startswith("Per-step metrics:")]
    text = "\n".join(body)
    for name in FIGURES:
        text = text.replace(f"]({name})", f"](_static/reproduce/{name})")
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    page = (
        "# A quick reproduction run\n\n"
        "The output of `subspace-optim reproduce --quick` (a short run of every optimizer "
        "family on scikit-learn's digits), turned into this page by "
        "`python docs/_tools/make_reproduce_page.py`. The default run "
        "(`subspace-optim reproduce`) is longer and follows the paper's setup more "
        "closely.\n\n" + text + "\n"
    )
    (DOCS / "reproduce_quick.md").write_text(page, encoding="utf-8")
    print(f"wrote {DOCS / 'reproduce_quick.md'} and {len(FIGURES)} figures")


if __name__ == "__main__":
    main()
