"""`dni bench transport` as a new user runs it, outside the checkout: the packaged job, results where asked."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.e2e


def test_bench_transport_works_outside_the_checkout(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dni", "bench", "transport", "--count", "2", "--results", "out"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out" / "bench-transport.json").read_text())["job"] == "mnist_fcn"
