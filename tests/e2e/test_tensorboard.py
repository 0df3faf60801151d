"""TensorBoard logging in a real run: the curves it records, and a missing package named before anything starts."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dni.coordinator.results.folder import read_metrics
from dni import run_job
from dni.errors import ConfigError
from tests.conftest import REPO, small_job
from tests.unit.test_tensorboard import events, points

pytestmark = pytest.mark.e2e

INSTALL = r"pip install 'dni\[tensorboard\]'"


def test_run_logs_the_metrics_it_records(tmp_path, data_root):
    folder, summary = run_job(small_job(data_root, tmp_path / "runs", tensorboard=str(tmp_path / "tb")), show_progress=False)
    records = read_metrics(folder.path)
    accumulator = events(tmp_path / "tb" / folder.path.name)
    assert len(records) == 2
    assert points(accumulator, "accuracy/test") == [(r["step"], np.float32(r["test_accuracy"])) for r in records]
    assert points(accumulator, "throughput/samples_per_second") == [
        (r["step"], np.float32(r["samples_per_second"])) for r in records]
    assert {f"stage{stage}/fraction/compute" for stage in range(3)} <= set(accumulator.Tags()["scalars"])
    last = accumulator.Histograms("stage0/staleness")[-1]
    assert (last.step, last.histogram_value.num) == (200, sum(records[-1]["workers"][0]["staleness"].values()))


def test_missing_package_fails_before_anything_starts_and_names_the_extra(tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import` raise ImportError (Python's documented import block), as a
    # missing tensorboard package makes importing torch.utils.tensorboard fail.
    results = tmp_path / "runs"
    job = small_job(tmp_path / "no-data", results, tensorboard=str(tmp_path / "tb"))
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "torch.utils.tensorboard", None)
        with pytest.raises(ConfigError, match=INSTALL):
            run_job(job, show_progress=False)
    assert not results.exists() and not (tmp_path / "tb").exists(), "no run folder, no workers, no event file"

    script = ("import sys; sys.modules['torch.utils.tensorboard'] = None; from dni.cli import main; "
              "main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", script, "run", "mnist-smoke", "--no-progress",
                             "--tensorboard", str(tmp_path / "tb"), "--results", str(results)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'dni[tensorboard]'" in result.stderr
    assert not results.exists()
