"""dni/lifetime.py: a folder names the process that works in it, so one left by a process that is gone is told apart."""
from __future__ import annotations

import json
import os
import socket

from dni.lifetime import OWNER, abandoned_by, claim, held_by, release

GONE = 2 ** 22 + 1  # above the kernel's largest pid (pid_max is at most 2^22): no process has it


def test_a_claimed_folder_belongs_to_this_live_process_until_released(tmp_path):
    claim(tmp_path)
    assert json.loads((tmp_path / OWNER).read_text())["pid"] == os.getpid()
    assert abandoned_by(tmp_path) is None
    release(tmp_path)
    assert not (tmp_path / OWNER).exists() and abandoned_by(tmp_path) is None


def test_a_folder_of_a_process_that_is_gone_is_abandoned(tmp_path):
    (tmp_path / OWNER).write_text(json.dumps({"pid": GONE, "host": socket.gethostname()}))
    assert abandoned_by(tmp_path) == GONE


def test_a_folder_of_another_host_or_with_a_mangled_mark_is_left_alone(tmp_path):
    (tmp_path / OWNER).write_text(json.dumps({"pid": GONE, "host": "elsewhere"}))
    assert abandoned_by(tmp_path) is None
    (tmp_path / OWNER).write_text("{")
    assert abandoned_by(tmp_path) is None


def test_a_folder_held_by_another_live_process_is_told_apart_from_ones_own(tmp_path):
    (tmp_path / OWNER).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert held_by(tmp_path) == os.getppid() and abandoned_by(tmp_path) is None
    claim(tmp_path)
    assert held_by(tmp_path) is None, "this process's own"
