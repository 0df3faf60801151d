"""dni/graph.py: a job's stages as a graph, its order, and the checks a job file gets before any worker starts."""
from __future__ import annotations

import pytest

from dni.errors import ConfigError
from dni.graph import Topology, join_shape


def graph(inputs, heads=None, names=None) -> Topology:
    names = names or ["a", "b", "c", "d"][:len(inputs)]
    return Topology.of(names, inputs, [name in (heads or ()) for name in names])


def test_stages_that_name_no_inputs_are_a_chain_ending_in_its_only_head():
    chain = Topology.of([None] * 3, [None] * 3, [False] * 3)
    assert chain.names == ("stage0", "stage1", "stage2") and chain.inputs == ((-1,), (0,), (1,)) and chain.heads == (2,)
    assert chain.chain and chain.order() == (0, 1, 2) and chain.consumers(-1) == (0,) and chain.consumers(2) == ()


def test_a_graph_knows_each_stages_inputs_consumers_heads_and_an_order_that_respects_them():
    towers = graph([["data"], ["data"], ["a", "b"]], heads=["c"])
    assert towers.inputs == ((-1,), (-1,), (0, 1)) and towers.consumers(-1) == (0, 1) and not towers.chain
    heads = graph([["c"], ["a"], ["data"], ["a"]], heads=["b", "d"])
    assert heads.order() == (2, 0, 1, 3) and heads.consumers(0) == (1, 3) and heads.heads == (1, 3)
    assert heads.describe(2) == "stage 2 ('c')"


@pytest.mark.parametrize("inputs, heads, message", [
    ([["data"], ["x"]], ["b"], "stage 'b' takes input 'x', but no stage is named so (known: data, a, b)"),
    ([["data"], ["a", "c"], ["b"]], ["c"], "stages 'b' -> 'c' -> 'b' form a cycle"),
    ([["data"], ["b"], ["b"]], ["c"], "stages 'b' -> 'b' form a cycle"),
    ([["data"], [], ["a"]], ["c"], "stage 'b' has no inputs, so no input reaches it: name 'data' or the stages it takes"),
    ([["data"], ["data", "data"]], ["b"], "stage 'b' takes an input twice: ['data', 'data']"),
    ([["data"], ["a"], ["data"]], ["b"], "stage 'c' reaches no head: nothing takes its output and it has no loss"),
    ([["data"], ["a"], ["b"]], ["b", "c"], "stage 'b' is a head (it has a loss) but 'c' takes its output: a head's "
                                          "output is scored, not passed on"),
])
def test_a_graph_that_does_not_hold_is_refused_naming_the_stage(inputs, heads, message):
    with pytest.raises(ConfigError) as refused:
        graph(inputs, heads)
    assert str(refused.value) == message


@pytest.mark.parametrize("names, message", [
    (["a", "a"], "two stages are named 'a'"),
    (["a", "data"], "stage name 'data' must be letters, digits, - or _, and not 'data'"),
    (["a", "b c"], "stage name 'b c' must be letters, digits, - or _, and not 'data'"),
])
def test_names_are_unique_words_and_not_data(names, message):
    with pytest.raises(ConfigError) as refused:
        Topology.of(names, [None, None], [False, False])
    assert str(refused.value) == message


def test_inputs_join_by_cat_along_their_first_dimension_or_by_sum_of_one_shape():
    assert join_shape("cat", [(4,), (6,)]) == (10,) and join_shape("cat", [(2, 5, 5), (3, 5, 5)]) == (5, 5, 5)
    assert join_shape("sum", [(4,), (4,)]) == (4,) and join_shape("sum", [(7,)]) == (7,)
    with pytest.raises(ConfigError, match=r"^head: inputs of shapes \[4\] and \[6\] do not join by sum"):
        join_shape("sum", [(4,), (6,)], "head")
    with pytest.raises(ConfigError, match=r"^s: inputs of shapes \[2, 5, 5\] and \[3, 4, 5\] do not join by cat"):
        join_shape("cat", [(2, 5, 5), (3, 4, 5)], "s")
