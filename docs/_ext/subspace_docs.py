"""Local Sphinx extension of the subspace-optim docs.

Two jobs:

1. **API coverage.** After all pages are read, every name in ``subspace_optim.__all__`` and
   in the ``__all__`` of each public submodule must have an entry in the API reference
   (the entry may sit at another public path of the same object, e.g.
   ``subspace_optim.Lanczos`` covers ``subspace_optim.eigensolvers.Lanczos``). Each missing
   name is a warning, so ``sphinx-build -W`` fails and says which page to add it to.
2. **Generated pages.** Some pages are written by scripts of the project (benchmarks,
   reports). They may not exist in a fresh checkout, so the build must not depend on them:
   each one that exists is appended to the "Measured results" toctree of ``index``, and
   the directive ``.. if-generated:: NAME`` renders its content (typically a link to the
   page) only when page ``NAME`` exists.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: pages that scripts of the project (benchmarks, reports) generate into docs/
GENERATED_PAGES: tuple[str, ...] = (
    "eigensolvers_benchmark",
    "performance",
    "memory_benchmark",
    "eos_findings",
    "distributed",
    "reliability",
    "reproduce_quick",
)

#: the objtypes of the Python domain that document a public name
_DOCUMENTED_TYPES = {"class", "function", "data", "exception", "attribute", "method", "property"}


def public_modules(package: str = "subspace_optim") -> list[str]:
    """The package and its submodules whose dotted path has no ``_``-prefixed part."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return names


def public_names(package: str = "subspace_optim") -> dict[str, Any]:
    """``{"module.name": object}`` for every entry of every public module's ``__all__``."""
    out: dict[str, Any] = {}
    for mod_name in public_modules(package):
        module = importlib.import_module(mod_name)
        for name in getattr(module, "__all__", ()):
            out[f"{mod_name}.{name}"] = getattr(module, name)
    return out


def resolve(fullname: str) -> tuple[bool, Any]:
    """Import the object a dotted name refers to; ``(found, object)``."""
    parts = fullname.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False, None
        return True, obj
    return False, None


def missing_public_names(documented: Iterable[str], package: str = "subspace_optim") -> list[str]:
    """Public names with no entry among ``documented`` (dotted names of documented objects).

    A public name counts as documented when its own dotted name is documented or when a
    documented dotted name refers to the very same object (a re-export). Plain values
    (strings, numbers, tuples) must be documented under their own name or a path that
    resolves to the same object.
    """
    documented = set(documented)
    ids = set()
    for name in documented:
        found, obj = resolve(name)
        if found:
            ids.add(id(obj))
    missing = []
    for name, obj in public_names(package).items():
        if name in documented or id(obj) in ids:
            continue
        missing.append(name)
    return sorted(missing)


def _check_coverage(app: Sphinx, env: Any) -> None:
    domain = env.get_domain("py")
    documented = {
        name for name, entry in domain.objects.items() if entry.objtype in _DOCUMENTED_TYPES
    }
    for name in missing_public_names(documented):
        logger.warning(
            "public name %s has no entry in the API reference; add an autodoc directive for "
            "it to the matching page under docs/api/ (a constant also needs a '#:' doc "
            "comment, or an explicit autodata directive, to be picked up by automodule)",
            name,
            type="subspace_docs",
            subtype="coverage",
        )


def existing_generated_pages(srcdir: str | Path) -> list[str]:
    """The generated pages present in ``srcdir`` (as Markdown or reStructuredText)."""
    src = Path(srcdir)
    return [
        name
        for name in GENERATED_PAGES
        if (src / f"{name}.md").exists() or (src / f"{name}.rst").exists()
    ]


class IfGenerated(SphinxDirective):
    """``.. if-generated:: NAME``: the content, only if the generated page NAME exists."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if name not in GENERATED_PAGES:
            raise self.error(f"{name!r} is not one of the generated pages {GENERATED_PAGES}")
        if name not in existing_generated_pages(self.env.srcdir):
            return []
        container = nodes.container()
        self.state.nested_parse(self.content, self.content_offset, container)
        return container.children


def _append_results_toctree(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname != "index":
        return
    pages = existing_generated_pages(app.srcdir)
    if not pages:
        return
    lines = [
        "",
        "",
        ".. toctree::",
        "   :hidden:",
        "   :maxdepth: 1",
        "   :caption: Measured results",
        "",
    ]
    lines += [f"   {name}" for name in pages]
    source[0] += "\n".join(lines) + "\n"


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("if-generated", IfGenerated)
    app.connect("source-read", _append_results_toctree)
    app.connect("env-check-consistency", _check_coverage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
