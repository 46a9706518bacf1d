"""Sphinx configuration of the diffsolve documentation site (built by ``docs/build.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# the gallery scripts and autodoc import the checkout's diffsolve, not another installed copy
sys.path.insert(0, str(ROOT))

import diffsolve  # noqa: E402

project = "diffsolve"
author = "the diffsolve developers"
copyright = "2026, the diffsolve developers"
release = diffsolve.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "examples",  # the gallery sources: sphinx-gallery renders them into gallery/
    "screenshots",
    # sphinx-gallery writes these next to the pages it generates; they are not pages
    "gallery/*.ipynb",
    "gallery/*.py",
    "gallery/*.zip",
    "gallery/*.json",
    "gallery/*.md5",
]

# -- API reference -----------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
# numpydoc renders the types from the docstrings; the annotations would repeat them, longer
autodoc_typehints = "none"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# A public function or class whose docstring lacks one of these sections fails the build:
# PR01 every parameter documented, RT01 a Returns section, EX01 an Examples section,
# SA01 a See Also section.
numpydoc_validation_checks = {"PR01", "RT01", "EX01", "SA01"}
numpydoc_validation_exclude = {
    # members of a documented class (result properties, model methods) are described in the
    # class page; the class itself and every function are validated
    r"^diffsolve(\.\w+)*\.[A-Z]\w*\.\w+$",
}
numpydoc_validation_overrides = {
    # result, state and settings dataclasses describe their fields under "Attributes": users
    # receive them from a solver rather than constructing them
    "PR01": [r"\nAttributes\n----------\n"],
}

# A cross-reference to a diffsolve name that does not exist (a renamed function, a typo)
# fails the build; references to other libraries are not checked (no network at build time,
# so no intersphinx inventories).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"^(?!diffsolve\b).*")]


def _public_bases(app, name, obj, options, bases):
    """Show a class's public ancestors instead of a private base class."""
    out = []
    for base in bases:
        while base.__name__.startswith("_") and base.__bases__:
            base = base.__bases__[0]
        out.append(base)
    bases[:] = out


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)


# -- Guides (Markdown) -------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# -- Example gallery ---------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "gallery",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "only_warn_on_example_error": False,
    "abort_on_example_error": False,
    "min_reported_time": 0,
    "show_memory": False,
    "promote_jupyter_magic": False,
    "first_notebook_cell": None,
    "plot_gallery": "True",  # build.py --fast passes -D plot_gallery=0
}

# -- HTML --------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"diffsolve {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    # the guides' titles are long: a few in the header, the rest under "More"
    "header_links_before_dropdown": 4,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
html_copy_source = False
