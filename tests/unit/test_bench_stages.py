"""dni/bench/stages.py: the speedup benchmark's stage of equal cost, with emulated device time."""
from __future__ import annotations

import torch
from torch import nn

from dni.bench.stages import EmulatedDelay, balanced
from dni.workers.build.registry import resolve_stage
from dni.workers.build.stages import BUILTIN_STAGES


def test_balanced_stacks_equal_layers_with_optional_logits_and_delay():
    module = balanced((1, 4, 4), features=5, layers=3, classes=10, delay_ms=2.0)
    linears = [layer for layer in module if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(16, 5), (5, 5), (5, 5), (5, 10)]
    assert isinstance(module[-1], EmulatedDelay) and module[-1].seconds == 0.002
    assert module(torch.randn(3, 1, 4, 4)).shape == (3, 10)


def test_it_is_a_benchmark_tool_named_by_import_path_not_a_built_in_stage():
    assert "balanced" not in BUILTIN_STAGES
    assert resolve_stage("dni.bench.stages:balanced") is balanced
