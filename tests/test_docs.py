"""The documentation builds offline, nitpicky and without a warning, and reads well offline.

``sphinx-build -n -W --keep-going`` fails on any warning: an unresolved cross-reference, or
the API-coverage warning that ``docs/_ext/subspace_docs.py`` emits for a public name with no
entry in the reference. The build runs on a copy of ``docs/`` and ``examples/`` (the gallery
writes its pages into the source tree), with the network unreachable, and executes the
examples gallery. The tests then read the built HTML: no page loads anything from the
network, the formulas have their MathJax, the gallery pages show output and figures, and
the reference has its links, values and flags.
"""

from __future__ import annotations

import argparse
import html
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sphinx.util.inventory import InventoryFile

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import subspace_docs  # noqa: E402

#: what the build of a source copy leaves out: earlier builds' output
_NOT_COPIED = shutil.ignore_patterns("_build", "auto_examples", "sg_execution_times.rst")


def build_docs(out: Path) -> tuple[Path, float]:
    """Build a copy of docs/ (and examples/) into ``out/html``; ``(html dir, seconds)``."""
    src = out / "src"
    shutil.copytree(DOCS, src / "docs", ignore=_NOT_COPIED)
    shutil.copytree(ROOT / "examples", src / "examples", ignore=_NOT_COPIED)
    html = out / "html"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        # no network: intersphinx must use the shipped inventories
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-n",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(out / "doctrees"),
            str(src / "docs"),
            str(html),
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    return html, seconds


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    html, seconds = build_docs(tmp_path_factory.mktemp("docs"))
    print(f"\ndocs build with the gallery: {seconds:.0f} s")
    return html


def _pages(built: Path) -> list[Path]:
    return sorted(p for p in built.rglob("*.html") if "_static" not in p.parts)


def _documented(built: Path) -> set[str]:
    with open(built / "objects.inv", "rb") as f:
        inventory = InventoryFile.load(f, "", os.path.join)
    names: set[str] = set()
    for role, entries in inventory.items():
        if role.startswith("py:") and role != "py:module":
            names.update(entries)
    return names


# ------------------------------------------------------------------ coverage and pages
def test_every_public_name_is_in_the_built_reference(built: Path) -> None:
    documented = _documented(built)
    assert "subspace_optim.SubspaceProjectedOptimizer" in documented
    assert subspace_docs.missing_public_names(documented) == []


def test_pages_exist_and_link_offline_to_torch(built: Path) -> None:
    for page in [
        "index",
        "guide/install",
        "guide/quickstart",
        "guide/concepts",
        "guide/eigensolvers",
        "guide/schedules",
        "guide/diagnostics",
        "guide/optimizers",
        "guide/checkpointing",
        "guide/distributed",
        "guide/reproducing",
        "guide/troubleshooting",
        "auto_examples/index",
        "api/index",
        "changelog",
    ]:
        assert (built / f"{page}.html").is_file(), page


# ------------------------------------------------------------------ offline
_REMOTE = re.compile(
    r"<(?:script[^>]*\bsrc|link[^>]*\bhref)\s*=\s*[\"']((?:https?:)?//[^\"']*)", re.IGNORECASE
)


def test_no_page_loads_anything_from_the_network(built: Path) -> None:
    pages = _pages(built)
    assert len(pages) > 20
    remote = {
        str(p.relative_to(built)): _REMOTE.findall(p.read_text(encoding="utf-8")) for p in pages
    }
    assert {page: urls for page, urls in remote.items() if urls} == {}
    # the check itself sees a remote script and a protocol-relative stylesheet
    assert _REMOTE.findall('<script defer src="https://cdn.example/tex-chtml.js"></script>')
    assert _REMOTE.findall('<link rel="stylesheet" href="//cdn.example/x.css" />')


def test_formulas_have_their_mathjax_in_the_built_tree(built: Path) -> None:
    concepts = (built / "guide" / "concepts.html").read_text(encoding="utf-8")
    assert r"\chi_k" in concepts
    scripts = re.findall(r"<script[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", concepts, re.IGNORECASE)
    assert scripts, "the Concepts page loads no MathJax"
    for src in scripts:
        assert (built / "guide" / src.split("?")[0]).resolve().is_file(), src
    mathjax = built / "_static" / "mathjax"
    assert (mathjax / "tex-chtml.js").is_file()
    # the CHTML output's fonts are there too, or the formulas render as boxes
    assert list((mathjax / "output" / "chtml" / "fonts").rglob("*.woff"))


# ------------------------------------------------------------------ the gallery
_EXECUTED = sorted(p.stem for p in (ROOT / "examples").glob("*.py") if p.name != "ddp_bulk_sgd.py")
_WITH_FIGURES = ["wrap_sgd", "dom_bulk_adam", "sharpness_monitor", "checkpoint_resume"]


def test_every_example_has_a_gallery_page(built: Path) -> None:
    index = (built / "auto_examples" / "index.html").read_text(encoding="utf-8")
    for script in sorted((ROOT / "examples").glob("*.py")):
        assert (built / "auto_examples" / f"{script.stem}.html").is_file(), script.name
        assert f"{script.stem}.html" in index, script.name
    for required in [*_WITH_FIGURES, "custom_eigensolver", "own_model_experiments"]:
        assert required in _EXECUTED


@pytest.mark.parametrize("name", _EXECUTED)
def test_gallery_pages_show_what_the_examples_printed(built: Path, name: str) -> None:
    page = (built / "auto_examples" / f"{name}.html").read_text(encoding="utf-8")
    outputs = re.findall(r'class="sphx-glr-script-out[^"]*".*?<pre>(.*?)</pre>', page, re.DOTALL)
    assert outputs and any(out.strip() for out in outputs), f"{name}: no printed output"
    assert "Traceback" not in page


@pytest.mark.parametrize("name", _WITH_FIGURES)
def test_gallery_pages_show_their_figures(built: Path, name: str) -> None:
    page = (built / "auto_examples" / f"{name}.html").read_text(encoding="utf-8")
    images = re.findall(rf'src="(\.\./_images/sphx_glr_{name}_\d+\.png)"', page)
    assert images, f"{name}: no figure on the page"
    for src in images:
        assert (built / "auto_examples" / src).resolve().stat().st_size > 5000, src


def test_landing_page_shows_the_figure_1_loss_plot(built: Path) -> None:
    index = (built / "index.html").read_text(encoding="utf-8")
    images = re.findall(r'src="(_images/sphx_glr_wrap_sgd_001\.png)"', index)
    assert images and (built / images[0]).stat().st_size > 5000
    assert 'href="auto_examples/wrap_sgd.html"' in index


def test_ddp_example_accepts_quick() -> None:
    # the examples' README (the gallery's index) says every script accepts --quick
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ddp_bulk_sgd.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout


# ------------------------------------------------------------------ reference quality
def test_signatures_link_torch_types_to_their_real_pages(built: Path) -> None:
    optim = (built / "api" / "optim.html").read_text(encoding="utf-8")
    operators = (built / "api" / "operators.html").read_text(encoding="utf-8")
    both = optim + operators
    for url in [
        "docs.pytorch.org/docs/stable/optim.html#torch.optim.Optimizer",
        "docs.pytorch.org/docs/stable/generated/torch.nn.Module.html#torch.nn.Module",
        "docs.pytorch.org/docs/stable/generated/torch.Generator.html#torch.Generator",
        "docs.pytorch.org/docs/stable/amp.html#torch.amp.GradScaler",
    ]:
        assert url in both, url


def test_constants_show_their_own_text_and_value(built: Path) -> None:
    type_docs = ["Built-in immutable sequence", "Create a new string object", "str(object="]
    for page in _pages(built):
        text = page.read_text(encoding="utf-8")
        for doc in type_docs:
            assert doc not in text, f"{page.relative_to(built)} shows {doc!r}"
    import subspace_optim

    optim = html.unescape((built / "api" / "optim.html").read_text(encoding="utf-8"))
    assert "The value is <code" in optim and "'dominant'," in optim
    index = html.unescape((built / "api" / "index.html").read_text(encoding="utf-8"))
    assert f"'{subspace_optim.__version__}'" in index


def test_attributes_are_entries_of_their_own(built: Path) -> None:
    page = (built / "api" / "diagnostics.html").read_text(encoding="utf-8")
    for field in ("eta_dom", "eta_bulk", "dot_dom", "sq_bulk", "refresh_seconds"):
        assert f'id="subspace_optim.StepStats.{field}"' in page, field
    # a comma-separated attribute list gave one entry named ``eta_dom, eta_bulk``, shown
    # garbled as ``eta_bulk (eta_dom,)``: no documented name holds a comma or a space now
    garbled = [name for name in _documented(built) if "," in name or " " in name]
    assert garbled == []
    # the fields of a record each have an entry (one name per entry in the source)
    experiments = (built / "api" / "experiments.html").read_text(encoding="utf-8")
    for field in ("initial_loss", "loss_at_switch"):
        assert f'id="subspace_optim.experiments.FamilyResult.{field}"' in experiments, field


def test_no_argument_names_wrap_over_two_lines() -> None:
    """Napoleon reads an entry's names from its first line: ``a, b,`` wrapped before
    ``    c: text`` would make the names a description. Keep them on one line (split the
    entry in two where they do not fit)."""
    wrapped = re.compile(r"^(\s+)[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*,\s*$")
    names = re.compile(r"^\s+[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)*\s*:(\s|$)")
    found = []
    for path in sorted((ROOT / "subspace_optim").rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, (line, after) in enumerate(itertools.pairwise(lines)):
            match = wrapped.match(line)
            indent = len(after) - len(after.lstrip())
            if match and names.match(after) and indent > len(match.group(1)):
                found.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert found == []


def test_no_attribute_entry_groups_names() -> None:
    """Napoleon makes one attribute called ``a, b`` of an ``Attributes:`` entry ``a, b:
    text``, shown garbled (``b (a,)``) and unreachable by references: one entry per name."""
    grouped = re.compile(r"^(\s+)[A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+\s*:(\s|$)")
    found = []
    for path in sorted((ROOT / "subspace_optim").rglob("*.py")):
        section: int | None = None  # indentation of the current Attributes: header
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            indent = len(line) - len(line.lstrip())
            if line.strip() in ("Attributes:", "Attributes (read-only):"):
                section = indent
            elif section is not None and line.strip() and indent <= section:
                section = None
            elif section is not None and grouped.match(line):
                found.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert found == []


def test_reproducing_page_lists_every_flag_of_the_parser(built: Path) -> None:
    from subspace_optim.__main__ import build_parser

    page = (built / "guide" / "reproducing.html").read_text(encoding="utf-8")
    rows = subspace_docs.subcommand_flags(build_parser(), "reproduce")
    flags = {opt for row, _ in rows for opt in re.findall(r"--[\w-]+", row)}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    expected = {
        opt
        for action in sub.choices["reproduce"]._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }
    assert flags == expected and len(expected) >= 20
    for flag in expected:
        assert f"{flag}" in page, flag


def test_every_api_entry_links_to_its_source(built: Path) -> None:
    for name in ("optim", "operators", "eigensolvers", "diagnostics", "subspace"):
        page = (built / "api" / f"{name}.html").read_text(encoding="utf-8")
        links = set(re.findall(r'href="(\.\./_modules/[^"#]+)', page))
        assert links, name
        for link in links:
            assert (built / "api" / link).resolve().is_file(), link


# ------------------------------------------------------------------ docstring sections
#: modules whose public callables may still lack Args/Returns/Raises sections: they were
#: being refactored when the check was introduced. Remove a module here once its
#: docstrings are complete; the check then holds it to the rule like every other module.
PENDING_SECTIONS: tuple[str, ...] = ()


def _defining_module(name: str) -> str:
    found, obj = subspace_docs.resolve(name)
    module = getattr(obj, "__module__", None) if found else None
    if module is None:  # a method: its class's module
        _, owner = subspace_docs.resolve(name.rpartition(".")[0])
        module = getattr(owner, "__module__", "")
    return module


def test_every_public_callable_has_args_returns_raises() -> None:
    missing = {
        name: sections
        for name, sections in subspace_docs.missing_docstring_sections().items()
        if not _defining_module(name).startswith(PENDING_SECTIONS)
    }
    assert missing == {}, (
        "public callables without the Google-style sections they need (Args: when they "
        "take parameters, Returns: when they return something, Raises: when they raise): "
        f"{missing}"
    )


def test_section_check_names_what_is_missing() -> None:
    def documented(x: int) -> int:
        """Double.

        Args:
            x: a number.

        Returns:
            ``2 x``.

        Raises:
            ValueError: ``x`` is negative.
        """
        if x < 0:
            raise ValueError(x)
        return 2 * x

    def bare(x: int) -> int:
        """Double."""
        if x < 0:
            raise ValueError(x)
        return 2 * x

    assert subspace_docs._needs(documented, skip_first=False) == {"args", "returns", "raises"}
    for kind in ("args", "returns", "raises"):
        assert subspace_docs._has_section(documented.__doc__, kind)
        assert not subspace_docs._has_section(bare.__doc__, kind)


# ------------------------------------------------------------------ snippets
_BLOCK = re.compile(
    r"^\.\. code-block:: python\n((?:   :[\w-]+:.*\n)*)\n((?:(?:   .*)?\n)+)", re.MULTILINE
)


def python_snippets() -> list[tuple[str, str, str]]:
    """``(page:line, options, code)`` of every ``.. code-block:: python`` under docs/."""
    out = []
    for page in sorted(DOCS.rglob("*.rst")):
        if "auto_examples" in page.parts or "_build" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        for m in _BLOCK.finditer(text):
            line = text[: m.start()].count("\n") + 1
            code = "\n".join(ln[3:] for ln in m.group(2).splitlines())
            out.append((f"{page.relative_to(DOCS)}:{line}", m.group(1), code))
    return out


def test_snippets_are_found() -> None:
    snippets = python_snippets()
    assert len(snippets) >= 20
    assert any(":caption: Fragment" in options for _, options, _ in snippets)


@pytest.mark.parametrize(
    "where,options,code",
    [s for s in python_snippets() if ":caption: Fragment" not in s[1]],
    ids=lambda v: v if isinstance(v, str) and ".rst:" in v else "",
)
def test_every_snippet_runs_or_is_marked_as_a_fragment(where: str, options: str, code: str):
    """A snippet without a ``:caption: Fragment...`` runs on its own, as printed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, where, "exec"), {"__name__": "snippet"})
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ the extension
def test_coverage_check_reports_an_undocumented_name() -> None:
    import subspace_optim as so

    everything = set(subspace_docs.public_names())
    assert subspace_docs.missing_public_names(everything) == []
    # drop every name under which Lanczos is exported: the check must name each of them
    lanczos = {name for name, obj in subspace_docs.public_names().items() if obj is so.Lanczos}
    assert "subspace_optim.Lanczos" in lanczos
    assert subspace_docs.missing_public_names(everything - lanczos) == sorted(lanczos)
    # documenting it under any one public path covers every re-export
    assert (
        subspace_docs.missing_public_names(everything - lanczos | {"subspace_optim.Lanczos"}) == []
    )


def test_generated_pages_are_optional(tmp_path: Path) -> None:
    assert subspace_docs.existing_generated_pages(tmp_path) == []
    (tmp_path / "performance.md").write_text("# Performance\n", encoding="utf-8")
    assert subspace_docs.existing_generated_pages(tmp_path) == ["performance"]


def test_constants_lose_their_type_docstring_and_state_their_value() -> None:
    modes = ("bulk", "dominant", "none")
    described = subspace_docs.describe_constant(modes, tuple.__doc__.splitlines())
    assert described == ["The value is ``('bulk', 'dominant', 'none')``."]
    own = subspace_docs.describe_constant(modes, ["The modes: bulk, dominant, none.", ""])
    assert own == [": The modes: bulk, dominant, none.", "", "", described[0]]
    big = {str(i): i for i in range(100)}
    assert subspace_docs.describe_constant(big, ["A table."]) == ["A table."]


def test_references_to_reexports_find_the_documented_entry() -> None:
    candidates = subspace_docs.reexport_candidates("Eigensolver", "subspace_optim", "ScipyEigsh")
    found = [c for c in candidates if subspace_docs.resolve(c)[0]]
    import subspace_optim as so

    assert any(subspace_docs.resolve(c)[1] is so.Eigensolver for c in found)


def test_gallery_runs_each_script_with_quick_in_order() -> None:
    assert subspace_docs.gallery_argv({}, {}) == ["--quick"]
    scripts = sorted(
        (ROOT / "examples").glob("*.py"), key=lambda p: subspace_docs.gallery_order(str(p))
    )
    assert next(p.name for p in scripts) == "wrap_sgd.py"
    assert set(subspace_docs.GALLERY_ORDER) == {p.name for p in scripts}
