"""Mutation testing with mutmut, and the page that reports it (docs/mutation.md).

One command, from the repository root (``pip install mutmut`` first; it takes a while, so run
it at low priority on a shared machine)::

    nice -n 19 python benchmarks/mutation_report.py

runs ``mutmut run`` with the configuration in ``pyproject.toml`` (``[tool.mutmut]``: which
modules are mutated, which tests are run) and writes the page from mutmut's results in
``mutants/``. ``--no-run`` only rewrites the page from the results already there;
``--max-children N`` sets mutmut's parallelism.

Plain mutmut 3 skips every decorated function (a decorator runs at import time, and
``@property`` breaks its trampolines). In the mutated modules most of the math carries
``@full_precision`` (an autocast guard that calls the function unchanged) and
``@torch.no_grad()``, so this script starts mutmut with those two decorators treated like
``@staticmethod``: mutmut's own operators, trampolines, runner and cache, with the decorated
functions mutated too. ``mutmut results`` / ``mutmut show NAME`` read the same cache.

Each surviving mutant needs a line in :data:`REASONS`, keyed by its mutmut name and the line
it changes (mutmut numbers the mutants of a function in order, so the line keeps a reason
from sticking to a different mutant after the code changes): why it is equivalent, or which
test was added to kill it (a killed mutant is no longer listed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "mutation.md"

#: decorators mutmut may look through: both call the function unchanged
TRANSPARENT_DECORATORS = ("full_precision", "torch.no_grad()")

#: mutmut's exit codes, as in ``mutmut.stats.status_by_exit_code`` (kept here so the page
#: can be rewritten without mutmut installed)
STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
    -11: "segfault",
    -9: "segfault",
    None: "not checked",
}

#: (mutant name, changed line after mutation, stripped) -> one-line reason
REASONS: dict[tuple[str, str], str] = {}


def _launch(argv: list[str]) -> int:
    """Run mutmut's command line with the transparent decorators let through."""
    import libcst as cst
    from libcst.metadata import PositionProvider
    from mutmut.mutation import file_mutation

    original = file_mutation.MutationVisitor._skip_node_and_children

    def skip(self, node):  # type: ignore[no-untyped-def]
        if (
            isinstance(node, cst.FunctionDef)
            and node.decorators
            and all(
                cst.Module([]).code_for_node(d.decorator) in TRANSPARENT_DECORATORS
                for d in node.decorators
            )
        ):
            position = self.get_metadata(PositionProvider, node, None)
            if position and position.start.line in self._ignored_node_lines:
                self.ignored_functions.add(node.name.value)
                return True
            return original(self, node.with_changes(decorators=()))
        return original(self, node)

    file_mutation.MutationVisitor._skip_node_and_children = skip
    from mutmut.__main__ import cli

    return cli.main(argv, prog_name="mutmut", standalone_mode=False) or 0


def run_mutmut(max_children: int | None) -> None:
    """``mutmut run``, then the mutants it did not kill once more by name.

    mutmut keeps a cached verdict until the mutated function changes, so a survivor stays a
    survivor after a test is added for it; naming it makes mutmut retest it with the tests
    as they are now (a killed mutant cannot come back to life by adding tests).
    """
    jobs = [] if max_children is None else ["--max-children", str(max_children)]
    subprocess.run([sys.executable, __file__, "--mutmut", "run", *jobs], cwd=ROOT, check=True)
    alive = [
        name
        for statuses in load_results().values()
        for name, status in statuses.items()
        if status in ("survived", "no tests", "suspicious")
    ]
    if alive:
        subprocess.run(
            [sys.executable, __file__, "--mutmut", "run", *jobs, *alive], cwd=ROOT, check=True
        )


def load_results() -> dict[str, dict[str, str]]:
    """module path -> mutant name -> status, from mutmut's ``.meta`` files."""
    out: dict[str, dict[str, str]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = data.get("exit_code_by_key", {})
        if not codes:
            continue
        module = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        out[module] = {k: STATUS.get(v, "suspicious") for k, v in codes.items()}
    return out


def changed_line(name: str, module: str) -> tuple[str, str]:
    """The line(s) a mutant removes and the line(s) it puts in their place (``mutmut show``)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    text = get_diff_for_mutant(name, path=module)
    minus = [ln[1:].strip() for ln in text.splitlines() if ln[:1] == "-" and ln[:3] != "---"]
    plus = [ln[1:].strip() for ln in text.splitlines() if ln[:1] == "+" and ln[:3] != "+++"]
    return (" / ".join(minus), " / ".join(plus))


def score(statuses: dict[str, str]) -> tuple[int, int]:
    """(detected, total) as mutmut's badge counts them: killed and timed out, out of all
    mutants less the skipped ones."""
    c = Counter(statuses.values())
    return c["killed"] + c["timeout"], sum(c.values()) - c["skipped"]


def write_page(results: dict[str, dict[str, str]]) -> str:
    lines = [
        "# Mutation testing",
        "",
        "Generated by `benchmarks/mutation_report.py` from mutmut's results; do not edit by hand.",
        "",
        "A mutant is a small change to the code (a flipped sign or comparison, an index off by one,",
        "a swapped or dropped argument, a changed constant) that the tests should notice. The",
        "modules below are the ones where such a change is silent: the result is still a tensor of",
        "the right shape, only wrong. [mutmut](https://github.com/boxed/mutmut) mutates them and",
        "runs the unit tests listed in `pyproject.toml` (`[tool.mutmut]`) that reach each mutated",
        "function.",
        "",
        "## Running it",
        "",
        "```bash",
        "pip install mutmut",
        "nice -n 19 python benchmarks/mutation_report.py   # mutmut run, then this page",
        "```",
        "",
        "The run copies the project into `mutants/` (ignored by git) and caches each mutant's",
        "result there, so a second run only retests what changed; `mutmut results` lists the",
        "survivors and `mutmut show NAME` shows one. `--no-run` rewrites the page from the cache.",
        "The full run takes tens of minutes, so CI runs `tests/test_mutation_sample.py` instead: a",
        "fixed sample of hand-applied mutants of the same kinds, every one of which must be killed.",
        "",
        "When you add a survivor's reason or a test that kills it, re-run the command; a survivor",
        "without a reason in the script's `REASONS` table is marked **unexplained** below.",
        "",
        "Plain mutmut 3 skips decorated functions. Most of the math here carries",
        "`@full_precision` or `@torch.no_grad()`, which call the function unchanged, so the script",
        "starts mutmut with those two decorators let through; everything else is mutmut's own.",
        "The score is mutmut's: killed plus timed out, out of all mutants (a mutant no listed",
        "test reaches counts as not killed).",
        "",
        "## Score per module",
        "",
        "| module | mutants | killed | timed out | survived | no tests | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    all_statuses: dict[str, str] = {}
    for module, statuses in results.items():
        all_statuses.update(statuses)
        c = Counter(statuses.values())
        det, tot = score(statuses)
        lines.append(
            f"| `{module}` | {tot} | {c['killed']} | {c['timeout']} | {c['survived']} | "
            f"{c['no tests']} | {100 * det / max(tot, 1):.1f}% |"
        )
    det, tot = score(all_statuses)
    lines.append(f"| **all** | {tot} | | | | | **{100 * det / max(tot, 1):.1f}%** |")
    unchecked = sum(1 for s in all_statuses.values() if s == "not checked")
    if unchecked:
        lines += ["", f"{unchecked} mutants were not checked (the run was interrupted)."]
    lines += [
        "",
        "## Survivors",
        "",
        "Every mutant that no test killed, with why.",
        "",
        "| mutant | change | reason |",
        "|---|---|---|",
    ]
    unexplained = 0
    for module, statuses in results.items():
        for name, status in statuses.items():
            if status not in ("survived", "no tests", "suspicious"):
                continue
            minus, plus = changed_line(name, module)
            reason = REASONS.get((name, plus))
            if reason is None:
                unexplained += 1
                reason = f"**unexplained** ({status})"
            short = name.split(".", 1)[1].replace("ǁ", ".")
            change = f"`{minus}` → `{plus}`".replace("|", "\\|")
            lines.append(f"| `{short}` | {change} | {reason} |")
    if unexplained:
        lines += ["", f"{unexplained} survivors are not explained yet."]
    PAGE.write_text("\n".join(lines) + "\n")
    return f"{det}/{tot} killed ({100 * det / max(tot, 1):.1f}%), {unexplained} unexplained"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="only rewrite the page")
    parser.add_argument("--max-children", type=int, default=None)
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from the working directory
    if not args.no_run:
        run_mutmut(args.max_children)
    print(write_page(load_results()))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--mutmut":
        sys.exit(_launch(sys.argv[2:]))
    sys.exit(main())
