"""Stages on GPUs: `device = "auto"` spreads stages over the visible GPUs and the pipeline learns.

CI has no GPU: these tests skip there, with the reason, and run on a machine with CUDA.
"""
from __future__ import annotations

import pytest
import torch

from dni import run_job
from tests.conftest import LEARNED, mlp_stages, small_job

pytestmark = pytest.mark.e2e

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", ["backprop", "sg"])
def test_stages_on_gpus_learn(mode, data_root, tmp_path):
    stages = [{**stage, "device": "auto"} for stage in mlp_stages()]
    _, summary = run_job(small_job(data_root, tmp_path, mode=mode, stages=stages), show_progress=False)
    assert all(worker["device"].startswith("cuda") for worker in summary["workers"])
    assert summary["test_accuracy"] > LEARNED


def test_auto_falls_back_to_cpu_without_gpus():
    from dni.workers.loop.devices import resolve_device
    from dni.errors import ConfigError

    expected = "cuda:1" if torch.cuda.device_count() > 1 else ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto", 1) == expected
    with pytest.raises(ConfigError, match="not one of cpu, cuda, cuda:N, auto"):
        resolve_device("tpu", 0)
    with pytest.raises(ConfigError, match="sees"):
        resolve_device(f"cuda:{torch.cuda.device_count()}", 0)
