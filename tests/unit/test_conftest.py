"""tests/conftest.py: a prerequisite only a set-up machine has (a Docker engine, Compose, the images) skips its tests
outside CI, so the README's `pytest` passes on a fresh machine, and fails them in CI, where it must be there."""
from __future__ import annotations

import pytest

from tests.conftest import in_ci, unavailable


@pytest.mark.parametrize("value", [None, "", "0", "false", "False"])
def test_outside_ci_a_missing_prerequisite_skips_with_its_reason(value, monkeypatch):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="no running Docker engine"):
        unavailable("no running Docker engine")


@pytest.mark.parametrize("value", ["true", "1", "yes"])
def test_in_ci_a_missing_prerequisite_fails(value, monkeypatch):
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match=r"no running Docker engine \(CI is set"):
        unavailable("no running Docker engine")
