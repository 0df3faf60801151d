"""Arrays to a stage's device and back: one host copy in, none out on the CPU (GPU paths: tests/e2e/test_gpu.py, benchmarks/gpu)."""
from __future__ import annotations

import numpy as np

from dni.workers.devices import synchronizer, to_device, to_host


def test_a_received_array_is_copied_once_into_a_writable_tensor():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame.flags.writeable = False  # as ZeroMQ's receive buffer
    tensor = to_device(frame, "cpu")
    tensor += 1
    assert tensor.tolist() == (frame + 1).tolist() and frame[0, 0] == 0


def test_a_cpu_tensor_leaves_without_a_copy():
    import torch

    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True) * 2
    array = to_host(tensor)
    assert array.tolist() == [0, 2, 4, 6, 8, 10]
    assert np.shares_memory(array, tensor.detach().numpy())


def test_only_devices_that_queue_work_need_settling():
    assert synchronizer("cpu") is None
    assert callable(synchronizer("cuda:0"))
