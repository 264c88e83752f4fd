"""The reliability catalogue left the package: the old import path still works in a source
checkout, with a DeprecationWarning, and gives the very same objects as ``tests/scenarios``."""

from __future__ import annotations

import importlib
import importlib.resources
import sys

import pytest
import scenarios


def _fresh_alias():
    sys.modules.pop("subspace_optim.testing.scenarios", None)
    return importlib.import_module("subspace_optim.testing.scenarios")


def test_the_old_import_path_warns_and_aliases_the_catalogue():
    old = _fresh_alias()  # importing alone does not warn (doctest collection imports it)
    with pytest.warns(DeprecationWarning, match=r"moved to tests/scenarios/"):
        bad_inputs = old.BAD_INPUTS
    assert bad_inputs is scenarios.BAD_INPUTS and old.run_fault is scenarios.run_fault
    with pytest.raises(AttributeError, match="no attribute 'not_a_case'"):
        _ = old.not_a_case


def test_from_import_warns_too():
    _fresh_alias()
    with pytest.warns(DeprecationWarning, match=r"moved to tests/scenarios/"):
        from subspace_optim.testing.scenarios import FAULTS
    assert FAULTS is scenarios.FAULTS


def test_the_catalogue_is_not_in_the_package_directory():
    import subspace_optim.testing as testing

    package_dir = importlib.resources.files(testing)
    assert not (package_dir / "scenarios").is_dir()
    assert "scenarios" not in testing.__all__
