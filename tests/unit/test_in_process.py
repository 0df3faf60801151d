"""coordinator/train/in_process.py: a graph of StageComputes stepped in one process.

In backprop it is plain autograd on the same graph, to the bit: a fan-in's joined input, a fan-out's summed
gradients (two per stage here: a sum of two rounds the same in either order, one of three or more is summed in
edge order, which autograd's engine need not share) and a second head's weighted loss go back along their edges
as autograd sends them. In sg every edge's
synthesizer learns from the gradient its consumer returns.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dni.coordinator.jobs.job import job_from_table
from dni.coordinator.train.in_process import InProcessGraph
from dni.spec import Mode
from dni.workers.build.builder import build_stages

STAGES = [{"name": "a", "inputs": ["data"], "kind": "linear_bn_relu", "features": 6},
          {"name": "b", "inputs": ["data"], "kind": "linear_bn_relu", "features": 4},
          {"name": "mix", "inputs": ["a", "b"], "kind": "linear_bn_relu", "features": 6},
          {"name": "skip", "inputs": ["mix", "a"], "join": "sum", "kind": "linear", "features": 3, "loss": "cross_entropy"},
          {"name": "aux", "inputs": ["b"], "kind": "linear", "features": 3, "loss": "cross_entropy", "loss_weight": 0.5}]


def job(mode: str):
    return job_from_table({"name": "unit", "dataset": "mnist", "mode": mode, "seed": 3, "stages": STAGES,
                           "optimizer": {"name": "adam", "lr": 1e-2}})


def batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 7, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(4)]


def test_backprop_on_a_graph_in_one_process_is_plain_autograd_to_the_bit():
    torch.set_num_threads(1)
    graph = InProcessGraph(job("backprop"), (7,), 3)
    modules = [stage.module for stage in build_stages(job("backprop").stages, input_shape=(7,), mode=Mode.BACKPROP,
                                                        num_classes=3, seed=3)]
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-2, fused=True)
    for step, (x, y) in enumerate(batches()):
        graph.step(step, x, y)
        a, b = modules[0](x), modules[1](x)
        mix = modules[2](torch.cat([a, b], 1))
        loss = F.cross_entropy(modules[3](mix + a), y, reduction="none").sum() + \
            F.cross_entropy(modules[4](b), y, reduction="none").sum() * 0.5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for compute, module in zip(graph.computes, modules):
        assert all(torch.equal(p, q) for p, q in zip(compute.module.state_dict().values(), module.state_dict().values()))
    assert not any(compute.in_flight for compute in graph.computes)


def test_in_sg_each_output_edge_has_its_synthesizer_and_each_learns_from_its_own_consumer():
    graph = InProcessGraph(job("sg"), (7,), 3)
    a = graph.computes[0]
    assert [interface.name for interface in a.interfaces] == ["synthesizer_mix", "synthesizer_skip"]
    before = [[p.detach().clone() for p in interface.synthesizer.parameters()] for interface in a.interfaces]
    for step, (x, y) in enumerate(batches()):
        graph.step(step, x, y)
    for interface, start in zip(a.interfaces, before):
        assert any(not torch.equal(p, q) for p, q in zip(interface.synthesizer.parameters(), start))
    assert set(a.edge_metrics()) == {"mix", "skip"} and not any(compute.in_flight for compute in graph.computes)
    assert set(graph.accuracy(batches())) == {"skip", "aux"}
