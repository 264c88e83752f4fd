"""mutmut's results as this study reads them: each mutant's status from the cache in
``mutants/``, the line a mutant changes, and the score as mutmut counts it."""

from __future__ import annotations

import json
from collections import Counter

from benchmarks.harness import ROOT

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
