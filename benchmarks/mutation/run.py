"""Mutation testing with mutmut, and the page that reports it (docs/mutation.md).

One command, from the repository root (``pip install mutmut`` first; it takes a while, so run
it at low priority on a shared machine)::

    nice -n 19 python -m benchmarks.mutation

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
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import ROOT

from .page import configured_modules, write_page
from .results import load_results

#: decorators mutmut may look through: both call the function unchanged
TRANSPARENT_DECORATORS = ("full_precision", "torch.no_grad()")

#: modules of which only these functions are mutated: the math where a wrong sign, index or
#: weight is silent. The rest of these modules is argument checking, messages and plumbing
#: (state dicts, validation, memory estimates) that the other tests cover by failing loudly.
ONLY_FUNCTIONS = {
    # the warm refresh's sketched check, its targets and its back-off
    "subspace_optim/eigensolvers/warm.py": frozenset({"_check", "_targets", "_meets", "_keep"}),
    # micro-batch weighting: splitting batches into chunks and weighting each by its count
    "subspace_optim/operators/_data.py": frozenset(
        {"batch_size", "_split", "micro_batches", "num_micro_batches"}
    ),
    "subspace_optim/operators/_model_operator.py": frozenset(
        {"_local_matmat", "_finish", "_matmat", "_local_loss_and_grad", "loss_and_grad"}
    ),
    # the curvature operators' products
    "subspace_optim/operators/_hvp.py": frozenset({"build_chunk_graph", "graph_hvp", "func_hvp"}),
    "subspace_optim/operators/_jacobian.py": frozenset(
        {"build_output_graph", "graph_jvp", "graph_vjp", "func_jacobian_block"}
    ),
    "subspace_optim/operators/hessian.py": frozenset(
        {"_build_graph", "_graph_product", "_chunk_product", "_losses_and_grads"}
    ),
    "subspace_optim/operators/ggn.py": frozenset(
        {"apply", "_build_graph", "_graph_product", "_chunk_product"}
    ),
    "subspace_optim/operators/covariance.py": frozenset(
        {
            "_losses_of",
            "_build_graph",
            "_graph_product",
            "_chunk_product",
            "_payload_columns",
            "_local_matmat",
            "_finish",
            "_losses_and_grads",
        }
    ),
}


def launch_mutmut(argv: list[str]) -> int:
    """Run mutmut's command line with the transparent decorators let through and only the
    :data:`ONLY_FUNCTIONS` of the modules listed there mutated."""
    patch_mutmut()
    from mutmut.__main__ import cli

    return cli.main(argv, prog_name="mutmut", standalone_mode=False) or 0


def patch_mutmut() -> None:
    """Teach mutmut's mutation visitor :data:`TRANSPARENT_DECORATORS` and
    :data:`ONLY_FUNCTIONS` (mutmut forks its workers, so they inherit the patch)."""
    import libcst as cst
    from libcst.metadata import PositionProvider
    from mutmut.mutation import file_mutation

    original = file_mutation.MutationVisitor._skip_node_and_children
    create = file_mutation.create_mutations
    current: dict[str, frozenset[str] | None] = {"only": None}

    def create_mutations(filename, *args, **kwargs):  # type: ignore[no-untyped-def]
        path = os.path.relpath(filename, ROOT) if os.path.isabs(filename) else filename
        current["only"] = ONLY_FUNCTIONS.get(path.replace(os.sep, "/"))
        try:
            return create(filename, *args, **kwargs)
        finally:
            current["only"] = None

    def skip(self, node):  # type: ignore[no-untyped-def]
        only = current["only"]
        if only is not None and isinstance(node, cst.FunctionDef):
            outer = self.get_metadata(file_mutation.OuterFunctionProvider, node, None) or node
            if outer.name.value not in only:
                return True  # a function the study leaves alone (ONLY_FUNCTIONS)
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
    file_mutation.create_mutations = create_mutations


def refresh_copies(root: Path, mutated: list[str]) -> None:
    """Delete mutmut's copies of everything in ``root`` (its ``mutants/``) but the mutated
    modules and their ``.meta`` results (the cache of verdicts).

    mutmut 3 copies the source tree once and never again: a module that is not mutated
    and changed since (or a renamed name it exports) stays stale in ``mutants/``, and the
    tests then run against old code. Its stats of which tests reach which function go too,
    so they are collected again with the tests as they are now.
    """
    keep = {root / m for m in mutated} | {root / f"{m}.meta" for m in mutated}
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        if path.is_file() and path not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def run_mutmut(max_children: int | None) -> None:
    """``mutmut run``, then the mutants it did not kill once more by name.

    mutmut keeps a cached verdict until the mutated function changes, so a survivor stays a
    survivor after a test is added for it; naming it makes mutmut retest it with the tests
    as they are now (a killed mutant cannot come back to life by adding tests).
    """
    jobs = [] if max_children is None else ["--max-children", str(max_children)]
    # mutmut forks its workers from a process that has run the tests: a torch thread pool
    # started there deadlocks in the forked child (seen as a wall-clock timeout), so one thread
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.mutation", "--mutmut", "run", *jobs],
        cwd=ROOT,
        check=True,
        env=env,
    )
    alive = [
        name
        for statuses in load_results().values()
        for name, status in statuses.items()
        if status in ("survived", "no tests", "suspicious")
    ]
    if alive:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.mutation", "--mutmut", "run", *jobs, *alive],
            cwd=ROOT,
            check=True,
            env=env,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="only rewrite the page")
    parser.add_argument("--max-children", type=int, default=None)
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from the working directory
    if not args.no_run:
        if (ROOT / "mutants").is_dir():
            refresh_copies(ROOT / "mutants", configured_modules())
        run_mutmut(args.max_children)
    print(write_page(load_results()))
    return 0
