"""Local Sphinx extension of the subspace-optim docs.

Five jobs:

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
3. **The gallery.** sphinx-gallery runs every script under ``examples/`` with ``--quick``
   (:func:`gallery_argv`), in the order of :data:`GALLERY_ORDER`, with one torch thread and
   the eigensolver registry restored between scripts (:func:`reset_torch`).
4. **Generated reference text.** ``.. cli-flags:: module:function SUBCOMMAND`` renders the
   flags of an ``argparse`` subcommand as a table, from the parser itself, so the docs list
   every flag the command accepts.
5. **Constants.** A module-level constant without a ``#:`` doc-comment would show the
   docstring of its type (``str``, ``tuple``); that text is dropped, so the page's own text
   stands alone, and a short constant states its value (:func:`describe_constant`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
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
    "mutation",
    "reproduce_quick",
    "subspace_sources",
    "bulk_adam",
    "lm_speedup",
    "paper_setups",
)

#: the order of the gallery (file names under examples/); scripts not listed come last
GALLERY_ORDER: tuple[str, ...] = (
    "wrap_sgd.py",
    "dom_bulk_adam.py",
    "train_char_gpt.py",
    "sharpness_monitor.py",
    "custom_eigensolver.py",
    "own_model_experiments.py",
    "checkpoint_resume.py",
    "ddp_bulk_sgd.py",
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
    """``{"module.name": object}`` for every entry of every public module's ``__all__``.

    Modules that cannot be imported here (an optional dependency missing) are left out.
    """
    out: dict[str, Any] = {}
    for mod_name in public_modules(package):
        try:
            module = importlib.import_module(mod_name)
        except ImportError:
            continue
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


def gallery_argv(gallery_conf: dict[str, Any], script_vars: dict[str, Any]) -> list[str]:
    """Command-line arguments of every gallery script: the small ``--quick`` settings."""
    return ["--quick"]


def gallery_order(filename: str) -> tuple[int, str]:
    """Sort key of a gallery script: its place in :data:`GALLERY_ORDER`, then its name."""
    name = Path(filename).name
    rank = GALLERY_ORDER.index(name) if name in GALLERY_ORDER else len(GALLERY_ORDER)
    return rank, name


_REGISTRY_SNAPSHOT: dict[str, Any] = {}


def reset_torch(gallery_conf: dict[str, Any], fname: str | None) -> None:
    """Between gallery scripts: one torch thread, and the eigensolver registry as it was."""
    import torch

    from subspace_optim.eigensolvers import registry as eigensolvers

    torch.set_num_threads(1)
    if not _REGISTRY_SNAPSHOT:
        _REGISTRY_SNAPSHOT.update(eigensolvers._REGISTRY)
    else:
        eigensolvers._REGISTRY.clear()
        eigensolvers._REGISTRY.update(_REGISTRY_SNAPSHOT)


def _load_parser(spec: str) -> argparse.ArgumentParser:
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)()


def subcommand_flags(parser: argparse.ArgumentParser, command: str) -> list[tuple[str, str]]:
    """``(flags, help)`` of every optional argument of one subcommand, in parser order.

    ``flags`` shows the option strings with the metavar (``--steps STEPS``); ``help`` ends
    with the default when the parser has one that is not ``None`` or ``False`` and the
    help text does not already state it.
    """
    sub = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ).choices[command]
    rows = []
    for action in sub._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        takes_value = action.nargs != 0
        metavar = action.metavar or action.dest.upper()
        flags = ", ".join(
            f"{opt} {metavar}" if takes_value else opt for opt in action.option_strings
        )
        text = " ".join((action.help or "").split())
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += f" (default: {action.default})"
        rows.append((flags, text))
    return rows


class CliFlags(SphinxDirective):
    """``.. cli-flags:: module:function SUBCOMMAND``: the subcommand's flags, as a table."""

    required_arguments = 2

    def run(self) -> list[nodes.Node]:
        spec, command = self.arguments
        try:
            rows = subcommand_flags(_load_parser(spec), command)
        except (ImportError, AttributeError, KeyError, StopIteration) as err:
            raise self.error(f"cannot read the flags of {spec} {command}: {err!r}") from err
        table = nodes.table(classes=["cli-flags"])
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=35)
        group += nodes.colspec(colwidth=65)
        head = nodes.thead()
        group += head
        head += self._row(("flag", "meaning"), literal=False)
        body = nodes.tbody()
        group += body
        for flags, text in rows:
            body += self._row((flags, text), literal=True)
        return [table]

    @staticmethod
    def _row(cells: tuple[str, str], *, literal: bool) -> nodes.row:
        row = nodes.row()
        for i, cell in enumerate(cells):
            entry = nodes.entry()
            para = nodes.paragraph()
            if literal and i == 0:
                para += nodes.literal(cell, cell)
            else:
                # flags named in the help text as code (smart quotes would turn -- into –)
                for j, part in enumerate(re.split(r"(--[\w-]+)", cell)):
                    para += nodes.literal(part, part) if j % 2 else nodes.Text(part)
            entry += para
            row += entry
        return row


#: constants whose ``repr`` is at most this long state their value on the page
VALUE_LIMIT = 100


def describe_constant(obj: Any, lines: list[str]) -> list[str]:
    """The docstring lines autodoc should show for the module-level constant ``obj``.

    ``lines`` is what autodoc found. When that is the docstring of ``type(obj)`` (the
    constant has no ``#:`` doc-comment of its own), it is dropped. A short constant of a
    plain type (string, number, tuple or frozenset of those) gets a last line stating its
    value. Napoleon reads a first line ``TEXT: TEXT`` of a constant's docstring as
    ``type: description``; a leading colon keeps a sentence that contains a colon whole.

    Args:
        obj: the constant.
        lines: its docstring as autodoc prepared it, one line per item.

    Returns:
        The lines to show instead.
    """
    out = list(lines)
    type_doc = (type(obj).__doc__ or "").strip().splitlines()
    if out and type_doc and out[0].strip() == type_doc[0].strip():
        out = []
    if out and ": " in out[0] and " " in out[0].split(": ", 1)[0]:
        out[0] = ": " + out[0]
    plain = (str, int, float, bool)
    simple = isinstance(obj, plain) or (
        isinstance(obj, tuple | frozenset) and all(isinstance(x, plain) for x in obj)
    )
    if simple and len(repr(obj)) <= VALUE_LIMIT:
        while out and not out[-1].strip():
            out.pop()
        out += (["", ""] if out else []) + [f"The value is ``{obj!r}``."]
    return out


def _process_docstring(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what == "data":
        lines[:] = describe_constant(obj, lines)


def reexport_candidates(target: str, module: str | None, cls: str | None) -> list[str]:
    """Dotted names a Python cross-reference ``target`` may mean, most specific first.

    ``module`` and ``cls`` are the context of the reference (the current module and class
    of the docstring or page it appears in). Candidates are the target itself, inside the
    class, inside the module, and inside the modules that really define the class and its
    bases (a docstring documented under a re-export still refers to its own module's names).

    Args:
        target: the reference's target, as written (``~`` already stripped).
        module: the ``py:module`` context, or ``None``.
        cls: the ``py:class`` context, or ``None``.

    Returns:
        The candidate names, without duplicates.
    """
    out = []
    if module and cls:
        out.append(f"{module}.{cls}.{target}")
        found, obj = resolve(f"{module}.{cls}")
        if found and hasattr(obj, "__module__"):
            out.append(f"{obj.__module__}.{getattr(obj, '__qualname__', cls)}.{target}")
            # the modules of the class and of its bases (a merged signature of a composed
            # class carries its bases' annotations)
            for base in getattr(obj, "__mro__", (obj,)):
                if getattr(base, "__module__", "").startswith("subspace_optim"):
                    out.append(f"{base.__module__}.{target}")
    if module:
        out.append(f"{module}.{target}")
    out.append(target)
    # the conventional short names a signature may carry (``from torch import nn, Tensor``)
    head, _, rest = target.partition(".")
    if head in _CONVENTIONAL:
        out.append(_CONVENTIONAL[head] + (f".{rest}" if rest else ""))
    return list(dict.fromkeys(out))


#: short names under which the library's modules import torch's namespaces
_CONVENTIONAL = {"nn": "torch.nn", "F": "torch.nn.functional", "Tensor": "torch.Tensor"}


def _documented_by_id(env: Any) -> dict[int, tuple[str, str]]:
    cache = getattr(env, "_subspace_docs_by_id", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            if entry.objtype == "module" or getattr(entry, "aliased", False):
                continue
            found, obj = resolve(name)
            if found and obj is not None and not isinstance(obj, str | int | float | tuple):
                cache.setdefault(id(obj), (name, entry.objtype))
        env._subspace_docs_by_id = cache
    return cache


def _signature_owner(node: Any) -> str | None:
    """The class (or function) whose signature ``node`` sits in, relative to its module."""
    from sphinx import addnodes

    parent = node.parent
    while parent is not None and not isinstance(parent, addnodes.desc_signature):
        parent = parent.parent
    if parent is None or not parent.get("fullname"):
        return None
    fullname = parent["fullname"]
    objtype = parent.parent.get("objtype") if parent.parent is not None else None
    if objtype in ("class", "exception"):
        return fullname
    return fullname.rpartition(".")[0] or None


def _resolve_reexport(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    if not (target.startswith("subspace_optim") or (module or "").startswith("subspace_optim")):
        return None
    if cls is None:  # a type in a signature: the class is the signature's own object
        cls = _signature_owner(node)
    domain = env.get_domain("py")
    documented = _documented_by_id(env)
    for candidate in reexport_candidates(target, module, cls):
        if candidate in domain.objects:  # e.g. a module constant named in a class docstring
            name = candidate
        else:
            found, obj = resolve(candidate)
            if not found or id(obj) not in documented:
                continue
            name, _objtype = documented[id(obj)]
        found_node = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
        )
        if found_node is None:  # documented under another role (a class as exception)
            matches = domain.resolve_any_xref(
                env, node["refdoc"], app.builder, name, node, contnode
            )
            found_node = matches[0][1] if matches else None
        if found_node is not None:
            return found_node
    # a type alias of the library (``Batch = tuple[Any, Tensor]``) in a signature: it has
    # no page of its own, so it stays plain text, as a builtin generic would
    import typing

    for candidate in reexport_candidates(target, module, cls):
        found, obj = resolve(candidate)
        if found and typing.get_origin(obj) is not None:
            return contnode
    # a name the module imported from another package (``Tensor``, ``nn.Module`` in a
    # signature): ask intersphinx for the object's defining path
    from sphinx.ext import intersphinx

    for candidate in reexport_candidates(target, module, cls):
        found, obj = resolve(candidate)
        defining = getattr(obj, "__module__", None) or ""
        qualname = getattr(obj, "__qualname__", None)
        if not found or not defining or defining.startswith("subspace_optim") or not qualname:
            continue
        node["reftarget"] = f"{defining}.{qualname}"
        resolved = intersphinx.missing_reference(app, env, node, contnode)
        node["reftarget"] = target
        if resolved is not None:
            return resolved
    return None


def _process_signature(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    # a dataclass field with a default_factory shows as ``= <factory>``, which is not
    # Python: Sphinx would then split the signature at every comma (``tuple[float``)
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("if-generated", IfGenerated)
    app.add_directive("cli-flags", CliFlags)
    # before napoleon (priority 500), which would parse the type's docstring
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    app.connect("autodoc-process-signature", _process_signature)
    app.connect("missing-reference", _resolve_reexport)
    app.connect("source-read", _append_results_toctree)
    app.connect("env-check-consistency", _check_coverage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


# ------------------------------------------------------------------ docstring sections
_SECTION = {
    "args": ("Args:", "Arguments:", "Parameters:"),
    "returns": ("Returns:", "Yields:"),
    "raises": ("Raises:",),
}


def _has_section(doc: str, kind: str) -> bool:
    return any(
        line.strip() in _SECTION[kind] for line in doc.splitlines() if line.strip().endswith(":")
    )


def _own_raise(func: Any) -> bool:
    """Whether the function's own body (not nested functions) raises an exception."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return False
    root = tree.body[0]
    stack = list(ast.iter_child_nodes(root))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(node, ast.Raise) and node.exc is not None:
            return True
        stack.extend(ast.iter_child_nodes(node))
    return False


def _needs(func: Any, *, skip_first: bool) -> set[str]:
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return set()
    params = list(sig.parameters.values())[1 if skip_first else 0 :]
    needs = set()
    if params:
        needs.add("args")
    ret = sig.return_annotation
    if ret is not inspect.Signature.empty and ret not in (None, "None", "NoReturn"):
        needs.add("returns")
    if _own_raise(func):
        needs.add("raises")
    return needs


def missing_docstring_sections(package: str = "subspace_optim") -> dict[str, list[str]]:
    """``{"dotted.name": ["Args", ...]}``: the Google-style sections a public callable lacks.

    A callable needs ``Args:`` when it takes parameters, ``Returns:`` (or ``Yields:``) when
    its return annotation is not ``None``, and ``Raises:`` when its own body raises. A class
    is checked through its ``__init__`` (its docstring holds the ``Args:``; a dataclass may
    list its fields under ``Attributes:`` instead) and through each public method it
    defines. Each object is reported once, under the first public name found for it.

    Args:
        package: the package whose public names (see :func:`public_names`) are checked.

    Returns:
        The callables with at least one missing section, and which sections they lack.
    """
    import dataclasses
    import inspect

    seen: set[int] = set()
    out: dict[str, list[str]] = {}

    def check(name: str, func: Any, doc: str, *, skip_first: bool, dataclass: bool = False):
        lacking = []
        for kind in ("args", "returns", "raises"):
            if kind not in _needs(func, skip_first=skip_first):
                continue
            if _has_section(doc, kind) or (
                kind == "args" and dataclass and _has_section(doc + "\nArgs:", "args")
            ):
                continue
            if kind == "args" and dataclass and "Attributes:" in doc:
                continue
            lacking.append(kind.capitalize())
        if lacking:
            out[name] = lacking

    for name, obj in public_names(package).items():
        if id(obj) in seen or inspect.ismodule(obj):
            continue
        seen.add(id(obj))
        if not getattr(obj, "__module__", "").startswith(package):
            continue  # re-exported from elsewhere (e.g. the tests' scenario catalogue)
        if inspect.isclass(obj):
            doc = inspect.getdoc(obj) or ""
            if "__init__" in vars(obj):
                check(
                    name,
                    obj.__init__,
                    doc,
                    skip_first=True,
                    dataclass=dataclasses.is_dataclass(obj),
                )
            for attr, member in vars(obj).items():
                if attr.startswith("_") or isinstance(member, property):
                    continue
                func = member.__func__ if isinstance(member, classmethod | staticmethod) else member
                if not inspect.isfunction(func):
                    continue
                method_doc = inspect.getdoc(getattr(obj, attr)) or ""
                check(
                    f"{name}.{attr}",
                    func,
                    method_doc,
                    skip_first=not isinstance(member, staticmethod),
                )
        elif inspect.isfunction(obj):
            check(name, obj, inspect.getdoc(obj) or "", skip_first=False)
    return out
