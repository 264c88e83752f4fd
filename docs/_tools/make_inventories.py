"""Write the small Sphinx inventories that let the docs link to Python, PyTorch, NumPy and
SciPy without the network.

The docs must build offline, so ``intersphinx`` cannot download the projects' own
``objects.inv``. This script builds an equivalent, smaller inventory for each project from
the *installed* packages: it walks the modules this library's docs refer to, keeps every
public class and function that really exists in the installed version, and maps it to the
URL layout each project's documentation uses (one generated page per object for PyTorch,
NumPy and SciPy; one page per module for the Python standard library). Links therefore
point at the right pages of the online documentation, and only names that exist are linked.

Autodoc writes a signature's types by their defining module (``torch.nn.modules.module.
Module``, ``torch._C.Generator``, ``torch.amp.grad_scaler.GradScaler``), which the projects'
own inventories do not list; each class is therefore also entered under that path, pointing
at the page of its public name.

Run from the repository root (the output is committed)::

    python docs/_tools/make_inventories.py
"""

from __future__ import annotations

import importlib
import inspect
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "_ext"))
from subspace_docs import resolve  # the docs extension's dotted-name resolver

OUT = Path(__file__).resolve().parent.parent / "_inventories"


def _public(module_name: str) -> list[tuple[str, str]]:
    """``(name, role)`` of the public classes and functions of a module."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
    out = []
    for name in names:
        obj = getattr(module, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        if inspect.isclass(obj):
            role = "exception" if issubclass(obj, BaseException) else "class"
        elif callable(obj):
            role = "function"
        else:
            continue
        out.append((name, role))
    return out


def _add_defining_paths(entries: dict[str, tuple[str, str]], root: str) -> None:
    """Enter each class also under ``__module__.__qualname__`` (same page and anchor).

    Entries made later (the explicit ones after the generated listings) claim the path first.
    """
    for name, (role, uri) in reversed(list(entries.items())):
        if role not in ("class", "exception"):
            continue
        found, obj = resolve(name)
        if not found or not inspect.isclass(obj):
            continue
        defining = f"{obj.__module__}.{obj.__qualname__}"
        if defining != name and defining.startswith(root) and defining not in entries:
            entries[defining] = (role, uri.replace("#$", f"#{name}"))


def _write(path: Path, project: str, version: str, entries: dict[str, tuple[str, str]]) -> None:
    lines = [f"{name} py:{role} 1 {uri} -\n" for name, (role, uri) in sorted(entries.items())]
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    path.write_bytes(header.encode() + zlib.compress("".join(lines).encode()))
    print(f"{path.name}: {len(lines)} entries ({project} {version})")


def torch_inventory() -> None:
    import torch

    entries: dict[str, tuple[str, str]] = {}
    generated = [
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.optim",
        "torch.optim.lr_scheduler",
        "torch.linalg",
        "torch.func",
        "torch.autograd",
        "torch.autograd.functional",
    ]
    for mod in generated:
        for name, role in _public(mod):
            full = f"{mod}.{name}"
            entries[full] = (role, f"generated/{full}.html#$")
    for name, role in _public("torch.utils.data"):
        entries[f"torch.utils.data.{name}"] = (role, "data.html#$")
    for name, role in _public("torch.distributed"):
        entries[f"torch.distributed.{name}"] = (role, "distributed.html#$")
    entries["torch.nn.parallel.DistributedDataParallel"] = (
        "class",
        "generated/torch.nn.parallel.DistributedDataParallel.html#$",
    )
    # documented on their section pages rather than on a generated page of their own
    entries["torch.optim.Optimizer"] = ("class", "optim.html#$")
    entries["torch.amp.GradScaler"] = ("class", "amp.html#$")
    entries["torch.amp.autocast"] = ("class", "amp.html#$")
    entries["torch.Tensor"] = ("class", "tensors.html#$")
    for attr in ("dtype", "device"):
        entries[f"torch.{attr}"] = ("class", "tensor_attributes.html#$")
    for method in ("step", "zero_grad", "state_dict", "load_state_dict", "add_param_group"):
        full = f"torch.optim.Optimizer.{method}"
        entries[full] = ("method", f"generated/{full}.html#$")
    for method in ("parameters", "named_parameters", "buffers", "train", "eval", "to"):
        entries[f"torch.nn.Module.{method}"] = ("method", "generated/torch.nn.Module.html#$")
    _add_defining_paths(entries, "torch.")
    _write(OUT / "torch.inv", "PyTorch", torch.__version__.split("+")[0], entries)


def numpy_inventory() -> None:
    import numpy

    entries: dict[str, tuple[str, str]] = {}
    for name, role in _public("numpy"):
        entries[f"numpy.{name}"] = (role, f"reference/generated/numpy.{name}.html#$")
    _add_defining_paths(entries, "numpy.")
    _write(OUT / "numpy.inv", "NumPy", numpy.__version__, entries)


def scipy_inventory() -> None:
    import scipy

    entries: dict[str, tuple[str, str]] = {}
    for mod in ("scipy.sparse.linalg", "scipy.linalg"):
        for name, role in _public(mod):
            full = f"{mod}.{name}"
            entries[full] = (role, f"reference/generated/{full}.html#$")
    _add_defining_paths(entries, "scipy.")
    _write(OUT / "scipy.inv", "SciPy", scipy.__version__, entries)


def python_inventory() -> None:
    import builtins
    import sys

    entries: dict[str, tuple[str, str]] = {}
    stdtypes = {"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "range"}
    for name in dir(builtins):
        obj = getattr(builtins, name)
        if name.startswith("_"):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            entries[name] = ("exception", "library/exceptions.html#$")
        elif name in stdtypes:
            entries[name] = ("class", "library/stdtypes.html#$")
        elif inspect.isclass(obj):
            entries[name] = ("class", "library/functions.html#$")
        elif callable(obj):
            entries[name] = ("function", "library/functions.html#$")
    entries["None"] = ("data", "library/constants.html#$")
    for mod in (
        "collections.abc",
        "typing",
        "dataclasses",
        "contextlib",
        "warnings",
        "argparse",
        "pathlib",
        "json",
        "csv",
        "os",
    ):
        for name, role in _public(mod):
            entries[f"{mod}.{name}"] = (role, f"library/{mod}.html#$")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    _write(OUT / "python.inv", "Python", version, entries)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    python_inventory()
    torch_inventory()
    numpy_inventory()
    scipy_inventory()
