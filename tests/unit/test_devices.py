"""workers/loop/devices.py on the CPU: which device a stage gets, and arrays to it and back with one host copy in and
none out (GPU paths: tests/e2e/test_gpu.py, benchmarks/gpu)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dni.errors import ConfigError
from dni.workers.loop.devices import resolve_device, synchronizer, to_device, to_host


def test_a_received_array_on_a_64_byte_boundary_becomes_a_tensor_without_a_copy():
    frame = torch.arange(12, dtype=torch.float32).numpy().reshape(3, 4)  # torch's allocations are 64-byte aligned
    assert frame.ctypes.data % 64 == 0
    assert np.shares_memory(to_device(frame, "cpu").numpy(), frame)


def test_an_array_off_the_boundary_is_copied_into_aligned_memory():
    buffer = torch.zeros(13).numpy()
    frame = buffer[1:]  # 4 bytes off the boundary, as ZeroMQ may place a frame inside its receive buffer
    tensor = to_device(frame, "cpu")
    assert tensor.data_ptr() % 64 == 0 and not np.shares_memory(tensor.numpy(), buffer)


def test_a_read_only_array_is_copied_once_into_a_writable_tensor():
    frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame.flags.writeable = False
    tensor = to_device(frame, "cpu")
    tensor += 1
    assert tensor.tolist() == (frame + 1).tolist() and frame[0, 0] == 0


def test_a_cpu_tensor_leaves_without_a_copy():
    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True) * 2
    array = to_host(tensor)
    assert array.tolist() == [0, 2, 4, 6, 8, 10]
    assert np.shares_memory(array, tensor.detach().numpy())


def test_only_devices_that_queue_work_need_settling():
    assert synchronizer("cpu") is None
    assert callable(synchronizer("cuda:0"))


@pytest.mark.parametrize("gpus, stage, expected", [(0, 3, "cpu"), (2, 0, "cuda:0"), (2, 1, "cuda:1"), (2, 2, "cuda:0"), (3, 5, "cuda:2")])
def test_auto_spreads_stages_over_the_visible_gpus_else_the_cpu(gpus, stage, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert resolve_device("auto", stage) == expected


def test_a_named_device_must_exist_and_be_spelt_right(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert [resolve_device(name, 4) for name in ("cpu", "cuda", "cuda:0")] == ["cpu", "cuda", "cuda:0"]
    with pytest.raises(ConfigError, match=r"^device 'cuda:1' asked for, but this worker sees 1 CUDA device\(s\)$"):
        resolve_device("cuda:1", 0)
    for wrong in ("tpu", "CUDA", "cuda:", "gpu:0"):
        with pytest.raises(ConfigError, match="is not one of cpu, cuda, cuda:N, auto"):
            resolve_device(wrong, 0)


def test_device_auto_is_the_local_ranks_gpu_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", 2, local_rank=1) == "cuda:1"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto", 0) == "cuda:1", "LOCAL_RANK 3 of a host with two GPUs"
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert resolve_device("auto", 0) == "cuda:0", "not under torchrun: the stage index decides"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device("auto", 5, local_rank=1) == "cpu"
