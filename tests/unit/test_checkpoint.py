"""workers/stage/checkpoint.py: a stage saved and restored into a fresh build takes exactly the next step the original takes."""
from __future__ import annotations

import pytest
import torch

from dni.workers.stage.checkpoint import load_checkpoint, save_checkpoint
from dni.workers.stage.compute import StageCompute
from dni.spec import Mode
from tests.unit.test_compute import batch, stage, target_like


def trained_stage(mode: Mode) -> StageCompute:
    compute, _ = stage(mode, optimizer="adam")
    for step in range(2):
        h = compute.forward(step, *batch(step))
        compute.update_after_forward(step)
        compute.receive_target(step, target_like(h if mode is not Mode.SL else h[:, :1], step))
    return compute


def one_more_step(compute: StageCompute) -> dict[str, torch.Tensor]:
    h = compute.forward(9, *batch(9))
    compute.update_after_forward(9)
    compute.receive_target(9, target_like(h if compute.mode is not Mode.SL else h[:, :1], 9))
    return compute.state()


@pytest.mark.parametrize("mode", [Mode.SG, Mode.SL, Mode.BACKPROP])
def test_a_restored_stage_continues_exactly_where_the_saved_one_was(mode, tmp_path):
    original = trained_stage(mode)
    save_checkpoint(str(tmp_path / "checkpoints" / "stage1.pt"), original)
    restored, _ = stage(mode, optimizer="adam")
    load_checkpoint(str(tmp_path / "checkpoints" / "stage1.pt"), restored)
    assert restored.steps == original.steps == 2
    expected, actual = one_more_step(original), one_more_step(restored)
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def test_a_checkpoint_is_written_whole_or_not_at_all(tmp_path):
    save_checkpoint(str(tmp_path / "stage0.pt"), trained_stage(Mode.SG))
    assert [path.name for path in tmp_path.iterdir()] == ["stage0.pt"], "the partial file was renamed into place"
    state = torch.load(tmp_path / "stage0.pt", weights_only=True)
    assert sorted(state) == ["module", "module_optimizer", "steps", "synthesizer", "synthesizer_optimizer"]
