"""Sphinx configuration of the subspace-optim documentation.

Build (offline; fails on any warning, including a public name missing from the API
reference)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import subspace_optim  # noqa: E402

project = "subspace-optim"
author = "subspace-optim developers"
copyright = "2026, subspace-optim developers"
release = subspace_optim.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "subspace_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_tools", "_ext", "_inventories", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# -- autodoc / napoleon -------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_default_options = {"no-value": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Shapes", "notes_style")]
python_use_unqualified_type_names = True
add_module_names = False

# -- intersphinx, offline -----------------------------------------------------------------
# The build never touches the network: each inventory is a local file that
# docs/_tools/make_inventories.py generates from the installed packages.
_INV = HERE / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(_INV / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(_INV / "torch.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
    "scipy": ("https://docs.scipy.org/doc/scipy/", str(_INV / "scipy.inv")),
}
intersphinx_timeout = 1

# -- math ---------------------------------------------------------------------------------
# MathJax runs in the reader's browser; SUBSPACE_OPTIM_MATHJAX may point at a local copy
# (e.g. to read the docs offline).
if os.environ.get("SUBSPACE_OPTIM_MATHJAX"):
    mathjax_path = os.environ["SUBSPACE_OPTIM_MATHJAX"]

# -- MyST (generated Markdown pages) -------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- HTML -----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"subspace-optim {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "navigation_with_keys": True,
}
pygments_style = "friendly"
pygments_dark_style = "monokai"
