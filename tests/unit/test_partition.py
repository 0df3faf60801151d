"""workers/build/partition.py: which operations each stage of a cut model runs, which values cross to which stage
(a skip straight to its user, several values packed into one edge), and every refusal with its reason."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dni.errors import ConfigError
from dni.workers.build.partition import Crossing, cut_model, top_level_cuts
from dni.workers.build.tracing import cut_here, trace


class Skip(nn.Module):
    """a -> b -> c -> d, with a's output also used by d: a skip over the cuts after b and c."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.a(x)
        deep = self.c(self.b(first))
        return self.d(torch.cat([deep, first], dim=1))


class TwoValues(nn.Module):
    """The first stage makes two values the second uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = self.a(x), self.b(x)
        cut_here()
        return self.c(left * right)


def test_a_chain_cut_by_names_crosses_one_value_per_cut():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    partition = cut_model(model, ["1", "2"], "chain")
    assert partition.stage_names() == ["1", "2", "head"]
    assert partition.crossings == [Crossing(-1, 0, ("input_1",), False), Crossing(0, 1, ("_1",), False),
                                   Crossing(1, 2, ("_2",), False)]


def test_a_skip_over_two_cuts_is_one_edge_straight_to_its_user_and_packed_into_a_join():
    partition = cut_model(Skip(), ["a", "b", "c"], "skip")
    assert [(c.producer, c.consumer, c.values, c.packed) for c in partition.crossings] == [
        (-1, 0, ("x",), False), (0, 1, ("a",), False), (1, 2, ("b",), False), (0, 3, ("a",), True), (2, 3, ("c",), True)]
    assert partition.sent(0) == ["a"]  # one value, on two edges
    assert partition.value_shapes((4,)) == {"x": (4,), "a": (4,), "b": (4,), "c": (4,)}


def test_several_values_from_one_stage_to_another_travel_packed_and_marks_cut():
    partition = cut_model(TwoValues(), [], "two")
    assert partition.names == ["mark0"]
    assert partition.crossings[1] == Crossing(0, 1, ("a", "b"), True)


def test_the_cuts_are_ordered_as_the_model_runs_not_as_listed():
    assert cut_model(Skip(), ["c", "a"], "skip").names == ["a", "c"]


def test_top_level_cuts_leave_out_a_child_after_which_an_in_place_write_would_cross():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(inplace=True), nn.Linear(4, 4), nn.Linear(4, 2))
    assert top_level_cuts(trace(model, "m"), model, "m") == ["0", "2", "3"]  # not after "1": the ReLU writes into its output


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.b(self.a(x)))


class SeveralOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x)
        return self.b(h), h


class LateData(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cat([self.a(x), x], dim=1))


class SizeCrosses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        rows = h.size(0)
        cut_here()
        return self.b(h).reshape(rows, -1)


class ScalesAcross(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        cut_here()
        return self.b(torch.relu_(h.mul_(2)))


CHAIN = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))


@pytest.mark.parametrize("model, cut, says", [
    (CHAIN, ["5"], "cut '5' is not a submodule of the model (its children: 0, 1, 2;"),
    (CHAIN, [], "no cut (name submodules in cut = [...] or call dni.cut_here() in forward)"),
    (CHAIN, ["0", "0"], "cuts '0' and '0' end at the same place"),
    (CHAIN, ["0", "1"], "cuts ['0', '1'] leave stage 1 (after '0' up to '1') without parameters to train"),
    (Shared(), ["b"], "'a.weight' is used on both sides of a cut (stages 0 and 1)"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)), ["0"],
     "module '1' ('_1') in stage 1 writes in place into '_0', which stage 0 makes"),
    (ScalesAcross(), [], ".mul_() ('mul_') in stage 1 writes in place into 'a', which stage 0 makes"),
    (SeveralOutputs(), ["a"], "forward returns several values"),
    (LateData(), ["a"], "the data is used after the first cut (by stage 1)"),
])
def test_what_cannot_be_cut_says_why(model, cut, says):
    with pytest.raises(ConfigError) as refused:
        cut_model(model, cut, "m")
    assert str(refused.value).startswith("model 'm': ") and says in str(refused.value)


def test_a_value_that_is_no_batch_of_floats_is_refused_once_the_shapes_are_known():
    partition = cut_model(SizeCrosses(), [], "m")
    with pytest.raises(ConfigError, match="'size' crosses into stage 1, but it is not a batch of floats"):
        partition.value_shapes((4,))


def test_a_model_that_fails_on_the_data_shape_says_so():
    with pytest.raises(ConfigError, match=r"model 'm' does not run on data of shape \[5\]: RuntimeError"):
        cut_model(Skip(), ["a"], "m").value_shapes((5,))

