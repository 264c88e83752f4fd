"""The reliability catalogue left the package: the old import path still works in a source
checkout, with a DeprecationWarning, and gives the very same objects as ``tests/scenarios``."""

from __future__ import annotations

import importlib
import importlib.resources
import sys

import pytest
import scenarios


def test_the_old_import_path_warns_and_aliases_the_catalogue():
    sys.modules.pop("subspace_optim.testing.scenarios", None)
    with pytest.warns(DeprecationWarning, match=r"moved to tests/scenarios/"):
        old = importlib.import_module("subspace_optim.testing.scenarios")
    assert old.BAD_INPUTS is scenarios.BAD_INPUTS and old.run_fault is scenarios.run_fault
    assert set(old.__all__) == set(scenarios.__all__)


def test_the_catalogue_is_not_in_the_package_directory():
    import subspace_optim.testing as testing

    package_dir = importlib.resources.files(testing)
    assert not (package_dir / "scenarios").is_dir()
    assert "scenarios" not in testing.__all__
