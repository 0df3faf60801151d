"""workers/stage/graphs.py: a stage's training passes replayed as CUDA graphs compute what the eager stage computes.

The graph tests need a CUDA device and skip without one, saying so; on the CPU a stage is never graphed.
"""
from __future__ import annotations

import pytest
import torch

from dni.spec import Mode, OptimizerSpec, StageSpec, SynthesizerSpec
from dni.workers.build.builder import build_stage
from dni.workers.stage.compute import StageCompute

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
HIDDEN = StageSpec("linear_bn_relu", {"features": 16}, SynthesizerSpec("mlp", {"hidden": 32, "layers": 2}))


def stage(mode: Mode, device: str, graphs: bool, window: int = 1) -> StageCompute:
    modules = build_stage(HIDDEN, index=1, input_shape=(8,), mode=mode, num_classes=4, seed=3, is_last=False, device=device)
    with torch.no_grad():  # a synthesizer that predicts something, so that every part of the step matters
        modules.synthesizer.output.weight.normal_(0, 0.1, generator=torch.Generator(device).manual_seed(0))
    return StageCompute(modules.module, modules.synthesizer, mode=mode, optimizer=OptimizerSpec("adam", 1e-2), num_classes=4,
                        window=window, cuda_graphs=graphs)


def train(compute: StageCompute, device: str, steps: int, batch: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    upstream = []
    for step in range(steps):
        x = torch.randn(batch if step < steps - 1 else batch // 2, 8, generator=generator).to(device)  # the last: partial
        labels = torch.randint(0, 4, (len(x),), generator=generator).to(device)
        h = compute.forward(step, x, labels)
        upstream.append(compute.update_after_forward(step))
        compute.receive_target(step, torch.randn(h.shape, generator=generator).to(device))
    return upstream


def test_a_cpu_stage_is_never_graphed():
    compute = stage(Mode.SG, "cpu", graphs=True)
    assert compute.block.graphed is None and compute.interface.graphed is None


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("mode", [Mode.SG, Mode.CDNI, Mode.BACKPROP])
def test_graphed_steps_train_as_eager_steps_do(mode):
    eager, graphed = stage(mode, "cuda", graphs=False), stage(mode, "cuda", graphs=True)
    expected, got = train(eager, "cuda", 6), train(graphed, "cuda", 6)
    assert graphed.block.graphed is not None and not graphed.block.graphed.failed
    assert (graphed.interface is not None and graphed.interface.graphed is not None) is mode.uses_synthesizer
    for a, b in zip(expected, got):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.state().items(), graphed.state().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@needs_cuda
@pytest.mark.gpu
def test_a_window_wider_than_one_graphs_the_module_only():
    compute = stage(Mode.SG, "cuda", graphs=True, window=4)
    assert compute.block.graphed is not None and compute.interface.graphed is None
