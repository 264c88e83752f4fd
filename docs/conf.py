"""Sphinx configuration of the subspace-optim documentation.

Build (offline; nitpicky, and fails on any warning, including an unresolved cross-reference
or a public name missing from the API reference)::

    sphinx-build -n -W --keep-going -b html docs docs/_build/html

The build runs the scripts under ``examples/`` (sphinx-gallery, with ``--quick`` and one
torch thread) and writes their pages under ``docs/auto_examples/`` (not committed).
"""

from __future__ import annotations

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
    # copies a MathJax 3 bundle into _static/mathjax and points mathjax_path at it: the
    # formulas render without a network connection
    "sphinx-mathjax-offline",  # the module name has hyphens
    # every API entry links to its highlighted source ("[source]")
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
    "subspace_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_tools",
    "_ext",
    "_inventories",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "Thumbs.db",
    ".DS_Store",
]
templates_path: list[str] = []

# -- autodoc / napoleon -------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
autodoc_default_options = {"no-value": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# attributes as entries of their own (cross-reference targets such as StepStats.loss)
napoleon_use_ivar = False
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

# -- nitpicky references --------------------------------------------------------------------
# With ``-n`` every cross-reference must resolve. The only exceptions are names that no
# inventory can hold: third-party classes of optional test dependencies.
nitpicky = True
nitpick_ignore = [
    # hypothesis (an optional test dependency) publishes no Sphinx inventory of its own
    ("py:class", "hypothesis.strategies.SearchStrategy"),
]

# -- math ---------------------------------------------------------------------------------
# sphinx-mathjax-offline (above) serves MathJax from _static/mathjax/tex-chtml.js, inside the
# built tree: no page loads anything from the network.

# -- gallery ---------------------------------------------------------------------------------
# Each script under examples/ runs once per build with ``--quick`` (see
# subspace_docs.gallery_argv); its printed output and matplotlib figures appear on its page.
# The DDP example needs torchrun and several processes: it is shown, not executed.
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/(?!ddp_)[^/]*\.py$",
    "reset_argv": "subspace_docs.gallery_argv",
    "reset_modules": ("matplotlib", "subspace_docs.reset_torch"),
    "within_subsection_order": "subspace_docs.gallery_order",
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 1,
    "show_signature": False,
    "capture_repr": (),
    "matplotlib_animations": False,
    "image_srcset": [],
    # the execution-times page loads jQuery and DataTables from CDNs: not written
    "write_computation_times": False,
    "copyfile_regex": "",
}

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
