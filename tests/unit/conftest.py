"""Unit tests need no dataset and start no process: both are refused here, so a test that would is caught at once.

In-process sockets (inproc://, ipc://, loopback tcp://) are fine. Tests that need workers or data go to tests/e2e/.
"""
from __future__ import annotations

import multiprocessing.process
import os
import subprocess

import pytest
import torch

torch.set_num_threads(1)  # tiny tensors: more threads only contend for the cores the rest of the suite uses
PROCESSES = "unit tests start no process: such a test belongs in tests/e2e/"


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(PROCESSES)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    monkeypatch.setattr(os, "fork", refuse)


@pytest.fixture
def data_root():
    pytest.fail("unit tests read no dataset: build a small one in the test (tests/unit/test_dataset.py) or move the test to tests/e2e/")
