"""The CIFAR-10 CNN with convolutional synthesizers learns on a slice of the (rebuilt) local copy."""
from __future__ import annotations

import pytest

from dni.coordinator.data.dataset import DataError, load_dataset
from dni import run_job
from tests.conftest import small_job

pytestmark = pytest.mark.e2e

CONV_STAGES = [
    {"kind": "conv_bn_relu", "channels": 16, "kernel": 5, "pool": "max", "synthesizer": {"kind": "conv", "channels": 16, "kernel": 3}},
    {"kind": "conv_bn_relu", "channels": 16, "kernel": 5, "pool": "avg", "synthesizer": {"kind": "conv", "channels": 16, "kernel": 3}},
    {"kind": "linear", "features": 10},
]


def test_rebuilt_copy_is_refused_unless_verification_is_turned_off(data_root):
    with pytest.raises(DataError, match="verify_data = false"):
        load_dataset("cifar10", data_root, download=False, verify=True)
    assert load_dataset("cifar10", data_root, download=False, verify=False).input_shape == (3, 32, 32)


@pytest.mark.parametrize("mode", ["sg", "backprop"])
def test_cifar_cnn_learns(mode, data_root, tmp_path):
    job = small_job(data_root, tmp_path, dataset="cifar10", stages=CONV_STAGES, mode=mode, iterations=150,
                    batch_size=32, train_subset=4800, test_subset=500, eval_every=150, verify_data=False)
    _, summary = run_job(job, show_progress=False)
    assert summary["test_accuracy"] > 0.2, f"{mode}: {summary['test_accuracy']:.3f} (chance is 0.1)"
