"""dni/files.py: files are written whole or not at all, and a write that fails names the file and leaves nothing."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from dni.errors import WriteFailed
from dni.files import replace_atomically, save_atomically, write_text_atomically, writing


def test_a_text_file_is_replaced_whole(tmp_path):
    target = tmp_path / "a.json"
    write_text_atomically(target, "old")
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_previous_file_removes_the_partial_and_names_the_target(tmp_path):
    target = tmp_path / "stage0.pt"
    target.write_text("committed")

    def full_disk(partial: Path) -> None:
        partial.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteFailed, match=f"^no space left on device writing {target}$") as error:
        replace_atomically(target, full_disk)
    assert error.value.errno == errno.ENOSPC and isinstance(error.value, OSError)
    assert target.read_text() == "committed" and sorted(p.name for p in tmp_path.iterdir()) == ["stage0.pt"]


def test_a_full_device_under_torch_save_is_an_oserror_naming_the_file():
    with pytest.raises(WriteFailed, match="^no space left on device writing /dev/full$"):
        with writing(Path("/dev/full")), open("/dev/full", "wb") as stream:
            torch.save({"w": torch.zeros(100_000)}, stream)


def test_saved_tensors_read_back(tmp_path):
    save_atomically(tmp_path / "model.pt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], torch.arange(3))


def test_writing_passes_other_errors_through():
    with pytest.raises(KeyError):
        with writing(Path("x")):
            raise KeyError("not a file's")
