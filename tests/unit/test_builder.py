"""workers/build/builder.py: one stage's module and synthesizer, checked before building and built identically wherever
the same seed builds them."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dni.errors import ConfigError
from dni.spec import Mode, StageSpec, SynthesizerSpec
from dni.workers.build.builder import build_stage, build_stages, output_shape_of, stage_seed
from dni.workers.interfaces.synthesizers import ConvSynthesizer, MLPSynthesizer

HIDDEN = StageSpec("linear_bn_relu", {"features": 8}, SynthesizerSpec("mlp", {"hidden": 16, "layers": 1}))


def test_built_in_stage_and_synthesizer_params_are_checked_before_building():
    with pytest.raises(ConfigError) as error:
        build_stage(StageSpec("linear_bn_relu", {"features": "128"}), index=0, input_shape=(1, 28, 28), mode=Mode.SG,
                    num_classes=10, seed=0, is_last=False)
    assert str(error.value) == "stage 0 (linear_bn_relu): features must be int, got '128' (str)"
    spec = StageSpec("linear_bn_relu", {"features": 8}, SynthesizerSpec("mlp", {"hidden": "1024"}))
    with pytest.raises(ConfigError) as error:  # a class builder: its __init__'s signature, past the four arguments dni passes
        build_stage(spec, index=1, input_shape=(16,), mode=Mode.SG, num_classes=10, seed=0, is_last=False)
    assert str(error.value) == "stage 1 (linear_bn_relu), synthesizer mlp: hidden must be int, got '1024' (str)"
    assert build_stage(spec, index=1, input_shape=(16,), mode=Mode.BACKPROP, num_classes=10, seed=0,
                       is_last=False).output_shape == (8,), "no synthesizer in backprop"


@pytest.mark.parametrize("mode, is_last, has_synthesizer", [
    (Mode.BACKPROP, False, False), (Mode.NO_BPROP, False, False), (Mode.SG, False, True), (Mode.CDNI, False, True),
    (Mode.SL, False, True), (Mode.SG, True, False),
])
def test_only_hidden_stages_of_the_synthetic_modes_get_a_synthesizer(mode, is_last, has_synthesizer):
    built = build_stage(HIDDEN, index=1, input_shape=(6,), mode=mode, num_classes=10, seed=0, is_last=is_last)
    assert (built.synthesizer is not None) is has_synthesizer


def test_the_synthesizer_predicts_what_the_mode_needs():
    h, labels = torch.randn(4, 8), torch.eye(10)[:4]
    sg = build_stage(HIDDEN, index=0, input_shape=(6,), mode=Mode.SG, num_classes=10, seed=0, is_last=False).synthesizer
    cdni = build_stage(HIDDEN, index=0, input_shape=(6,), mode=Mode.CDNI, num_classes=10, seed=0, is_last=False).synthesizer
    sl = build_stage(HIDDEN, index=0, input_shape=(6,), mode=Mode.SL, num_classes=10, seed=0, is_last=False).synthesizer
    assert sg(h, None).shape == (4, 8) and cdni(h, labels).shape == (4, 8) and sl(h, None).shape == (4, 1)
    assert cdni.hidden[0].in_features == 8 + 10, "the one-hot label is part of the input"
    assert not sg.output.weight.any() and not cdni.output.weight.any(), "gradients start at zero"
    assert sl.output.weight.any(), "a squared output starting at zero could never move"


def test_the_same_seed_and_index_build_the_same_weights_and_others_do_not():
    first, again = (build_stage(HIDDEN, index=1, input_shape=(6,), mode=Mode.SG, num_classes=10, seed=3, is_last=False)
                    for _ in range(2))
    other_stage = build_stage(HIDDEN, index=2, input_shape=(6,), mode=Mode.SG, num_classes=10, seed=3, is_last=False)
    for name, value in first.module.state_dict().items():
        assert torch.equal(value, again.module.state_dict()[name])
    for name, value in first.synthesizer.state_dict().items():
        assert torch.equal(value, again.synthesizer.state_dict()[name])
    assert not torch.equal(first.module[1].weight, other_stage.module[1].weight)
    assert (stage_seed(3, 1), stage_seed(0, 2)) == (3 * 1009 + 1, 2)


def test_output_shape_is_found_without_changing_the_module():
    spec = StageSpec("conv_bn_relu", {"channels": 4, "kernel": 3, "pool": "max", "pool_size": 2},
                     SynthesizerSpec("conv", {"channels": 2, "kernel": 3}))
    conv = build_stage(spec, index=0, input_shape=(3, 8, 8), mode=Mode.SG, num_classes=10, seed=0, is_last=False)
    assert conv.output_shape == (4, 4, 4) and isinstance(conv.synthesizer, ConvSynthesizer)
    assert conv.module.training, "back in training mode after the probe"
    assert int(conv.module[1].num_batches_tracked) == 0, "the probe ran in eval mode: no batch statistics taken"
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    assert output_shape_of(module, (3, 4)) == (5,) and not module.training


def test_a_synthesizer_by_import_path_is_built_with_the_shapes_dni_passes():
    spec = StageSpec("linear", {"features": 5}, SynthesizerSpec("dni.workers.interfaces.synthesizers:MLPSynthesizer", {"hidden": 3}))
    built = build_stage(spec, index=0, input_shape=(2, 2), mode=Mode.SL, num_classes=10, seed=0, is_last=False)
    assert isinstance(built.synthesizer, MLPSynthesizer)
    assert (built.output_shape, built.synthesizer.output_shape, built.synthesizer.hidden[0].in_features) == ((5,), (1,), 5)


def test_a_graph_is_built_in_its_order_each_stage_for_its_inputs_joined():
    stages = [StageSpec("linear_bn_relu", {"features": 4}, name="a", inputs=("data",)),
              StageSpec("linear", {"features": 3}, name="head", inputs=("b", "a"), loss="cross_entropy"),
              StageSpec("linear_bn_relu", {"features": 6}, name="b", inputs=("data",))]
    built = build_stages(stages, input_shape=(5,), mode=Mode.SG, num_classes=3, seed=0)
    assert [modules.input_shape for modules in built] == [(5,), (10,), (5,)]
    assert [list(modules.synthesizers) for modules in built] == [["head"], [], ["head"]]
    with pytest.raises(ConfigError, match=r"stage 1 \('head'\): inputs of shapes \[6\] and \[4\] do not join by sum"):
        build_stages([*stages[:1], replace(stages[1], join="sum"), stages[2]], input_shape=(5,), mode=Mode.SG,
                     num_classes=3, seed=0)


def test_a_stage_with_several_output_edges_gets_a_synthesizer_for_each():
    modules = build_stage(StageSpec("linear_bn_relu", {"features": 4}), index=0, input_shape=(5,), mode=Mode.CDNI,
                          num_classes=3, seed=0, is_last=False, outputs=("left", "right"))
    left, right = modules.synthesizers.values()
    assert list(modules.synthesizers) == ["left", "right"] and left is not right and modules.synthesizer is left


class TwoWays(torch.nn.Module):
    """One output per edge: the features, and a wider view of them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.linear(x)
        return h, torch.cat([h, h], dim=1)


def two_ways(input_shape: tuple[int, ...]) -> TwoWays:
    return TwoWays()


def test_a_module_of_one_output_per_edge_gets_each_edges_shape_and_a_synthesizer_of_that_shape():
    spec = StageSpec(f"{__name__}:two_ways", {}, SynthesizerSpec("mlp", {"hidden": 8, "layers": 1}))
    built = build_stage(spec, index=0, input_shape=(6,), mode=Mode.SG, num_classes=10, seed=0, is_last=False,
                        outputs=("narrow", "wide"))
    assert built.edge_shapes == {"narrow": (4,), "wide": (8,)} and built.edge_shape("wide") == (8,)
    assert [synthesizer.output.out_features for synthesizer in built.synthesizers.values()] == [4, 8]
    with pytest.raises(ConfigError, match=r"stage 0 \(.*two_ways\): the module returns 2 outputs for its 3 output edges"):
        build_stage(spec, index=0, input_shape=(6,), mode=Mode.SG, num_classes=10, seed=0, is_last=False,
                    outputs=("a", "b", "c"))
