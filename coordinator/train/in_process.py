"""A job's graph of stages stepped in one process: the same `StageCompute` objects the workers run, no sockets.

Each step goes through the stages in the graph's order (a stage's inputs before it), every head scores its own
labels, and the targets then go back in the reverse order, each along the edge it belongs to, before the next
step: what the workers do with a window of one batch, as the reference's single script does. It is the baseline
a graph's accuracy on workers is compared with (`benchmarks/graphs`), and the README's single-process loop for a
graph: a stage with several inputs takes them in the order of its edges, one with several outputs takes a target
per edge.
"""
from __future__ import annotations

import numpy as np
import torch

from dni.coordinator.jobs.job import Job
from dni.coordinator.train.routes import head_labels, same_labels
from dni.graph import DATA
from dni.workers.build.contracts import Shape
from dni.workers.build.builder import build_stages
from dni.workers.stage.blocks import Outputs
from dni.workers.stage.compute import StageCompute, Upstream

__all__ = ["InProcessGraph"]


class InProcessGraph:
    """The job's stages in this process, built as its workers build them, with a window of one batch."""

    def __init__(self, job: Job, input_shape: Shape, num_classes: int) -> None:
        self.job, self.topology = job, job.topology
        built = build_stages(job.stages, input_shape=input_shape, mode=job.mode, num_classes=num_classes, seed=job.seed)
        names = self.topology.names
        self.computes = []
        for index, modules in enumerate(built):
            head = index in self.topology.heads
            self.computes.append(StageCompute(
                modules.module, modules.synthesizers or None, mode=job.mode, optimizer=job.optimizer,
                inputs=[DATA if source < 0 else names[source] for source in self.topology.inputs[index]],
                outputs=[names[consumer] for consumer in self.topology.consumers(index)] or None,
                join=job.stages[index].join, loss=job.head_loss(index) if head else None,
                loss_weight=job.stages[index].loss_weight, num_classes=num_classes, name=self.topology.describe(index)))
        self.labels = {head: head_labels(job, head) for head in self.topology.heads}
        self.order = self.topology.order()
        # each stage's inputs as (producer, the output edge of the producer's that leads here); -1: the data
        self.edges = [[(source, self.topology.consumers(source).index(index) if source >= 0 else -1)
                       for source in self.topology.inputs[index]] for index in range(len(built))]

    def step(self, batch: int, x: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step of every stage, the targets back before it returns."""
        outputs: dict[int, Outputs] = {-1: x}
        upstream: dict[int, Upstream] = {}
        for index in self.order:
            compute, inputs = self.computes[index], self._inputs(index, outputs)
            if index in self.labels:
                upstream[index] = compute.train_last(inputs, self._labels(index, labels)).upstream
            else:
                outputs[index] = compute.forward(batch, inputs, labels)
                upstream[index] = compute.update_after_forward(batch)
        for index in reversed(self.order):
            sent = upstream[index]
            targets = sent if isinstance(sent, tuple) else (sent,)
            for (source, edge), target in zip(self.edges[index], targets):
                if source >= 0 and target is not None:
                    self._back(batch, source, edge, target, upstream)

    def _inputs(self, index: int, outputs: dict[int, Outputs]) -> list[torch.Tensor]:
        """What each input edge of stage `index` carries: its producer's output, or the output for that edge."""
        return [carried[edge] if isinstance(carried := outputs[source], tuple) else carried
                for source, edge in self.edges[index]]

    def _back(self, batch: int, source: int, edge: int, target: torch.Tensor, upstream: dict[int, Upstream]) -> None:
        producer = self.computes[source]
        if producer.awaits_target(batch, edge):
            sent = producer.receive_target(batch, target, edge)
            if producer.mode.locked:
                upstream[source] = sent

    def _labels(self, head: int, labels: torch.Tensor) -> torch.Tensor:
        own = self.labels[head]
        return labels if own is same_labels else torch.from_numpy(np.ascontiguousarray(own(labels.numpy())))

    @torch.no_grad()
    def accuracy(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Each head's accuracy on evaluation batches, by head name."""
        right = dict.fromkeys(self.topology.heads, 0)
        examples = 0
        for x, labels in batches:
            outputs: dict[int, Outputs] = {-1: x}
            for index in self.order:
                outputs[index] = self.computes[index].evaluate(self._inputs(index, outputs), labels)
            for head in right:
                logits = outputs[head]
                assert isinstance(logits, torch.Tensor), "a head outputs one tensor"
                right[head] += int((logits.argmax(1) == self._labels(head, labels)).sum())
            examples += len(labels)
        return {self.topology.names[head]: count / examples for head, count in right.items()}
