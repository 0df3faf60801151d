"""workers/build/registry.py: builders are found by built-in name, entry point or import path, and a job's
parameters are checked against the builder's signature before it is called."""
from __future__ import annotations

import sys
from typing import Any

import pytest
from torch import nn

from dni.workers.build.registry import (STAGE_ARGUMENTS, STAGE_GROUP, SYNTHESIZER_ARGUMENTS, UnknownBuilderError, check_params,
                                  resolve_stage, resolve_synthesizer)
from dni.errors import ConfigError
from dni.workers.build.stages import linear_bn_relu
from dni.workers.interfaces.synthesizers import ConvSynthesizer, MLPSynthesizer


def annotated(input_shape: tuple[int, ...], features: int, scale: float = 1.0, pool: str = "none", bias: bool = True) -> nn.Module:
    return nn.Identity()


def unannotated(input_shape, features, scale=1.0):
    return nn.Identity()


def open_ended(input_shape: tuple[int, ...], features: int, **options: Any) -> nn.Module:
    return nn.Identity()


NOT_CALLABLE = 42


def test_built_in_names_resolve_to_the_built_in_builders():
    assert resolve_stage("linear_bn_relu") is linear_bn_relu
    assert (resolve_synthesizer("mlp"), resolve_synthesizer("conv")) == (MLPSynthesizer, ConvSynthesizer)


def test_an_import_path_resolves_to_the_callable_it_names():
    assert resolve_stage(f"{__name__}:annotated") is annotated
    with pytest.raises(UnknownBuilderError, match=f"^stage kind '{__name__}:NOT_CALLABLE' is not callable$"):
        resolve_stage(f"{__name__}:NOT_CALLABLE")
    with pytest.raises(UnknownBuilderError, match=f"^synthesizer kind '{__name__}:absent' cannot be imported: "):
        resolve_synthesizer(f"{__name__}:absent")
    with pytest.raises(UnknownBuilderError, match="^stage kind 'no_such_package_dni:x' cannot be imported: No module named"):
        resolve_stage("no_such_package_dni:x")


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownBuilderError, match=r"^unknown synthesizer kind 'lstm'; known: conv, mlp \(or an import path package.module:Name\)$"):
        resolve_synthesizer("lstm")


def test_an_entry_point_registers_a_stage_by_name(tmp_path, monkeypatch):
    dist_info = tmp_path / "dni_unit_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: dni-unit-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{STAGE_GROUP}]\nunit_annotated = {__name__}:annotated\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_stage("unit_annotated") is annotated
    with pytest.raises(UnknownBuilderError, match="known: conv_bn_relu, linear, linear_bn_relu, unit_annotated "):
        resolve_stage("missing")


@pytest.mark.parametrize("params, message", [
    ({"features": "128"}, "features must be int, got '128' (str)"),
    ({"features": True}, "features must be int, got True (bool)"),
    ({"features": 4.0}, "features must be int, got 4.0 (float)"),
    ({"features": 4, "scale": True}, "scale must be float, got True (bool)"),
    ({"features": 4, "scale": "0.5"}, "scale must be float, got '0.5' (str)"),
    ({"features": 4, "pool": 3}, "pool must be str, got 3 (int)"),
    ({"features": 4, "bias": 1}, "bias must be bool, got 1 (int)"),
    ({"features": 4, "width": 8}, "unknown parameter 'width'; accepted: features, scale, pool, bias"),
    ({"features": 4, "width": 8, "input_shape": [3]}, "unknown parameters 'width', 'input_shape'; accepted: features, scale, pool, bias"),
    ({"scale": 2.0}, "missing parameter 'features'; accepted: features, scale, pool, bias"),
])
def test_params_that_do_not_fit_the_builder_signature_are_named(params, message):
    with pytest.raises(ConfigError) as error:
        check_params(annotated, params, "stage 3 (annotated)", STAGE_ARGUMENTS)
    assert str(error.value) == f"stage 3 (annotated): {message}"


def test_params_that_fit_pass_and_unannotated_builders_are_not_type_checked():
    check_params(annotated, {"features": 4, "scale": 1, "pool": "max", "bias": False}, "stage 0", STAGE_ARGUMENTS)  # an int is a float
    check_params(unannotated, {"features": "128", "scale": "big"}, "stage 0", STAGE_ARGUMENTS)
    check_params(open_ended, {"features": 4, "anything": "goes"}, "stage 0", STAGE_ARGUMENTS)
    with pytest.raises(ConfigError, match="features must be int"):
        check_params(open_ended, {"features": "4"}, "stage 0", STAGE_ARGUMENTS)
    with pytest.raises(ConfigError, match="unknown parameter 'width'; accepted: features, scale"):
        check_params(unannotated, {"features": 4, "width": 1}, "stage 0", STAGE_ARGUMENTS)


def test_a_synthesizer_class_is_checked_past_the_four_arguments_dni_passes():
    check_params(MLPSynthesizer, {"hidden": 8, "layers": 1}, "mlp", SYNTHESIZER_ARGUMENTS)
    with pytest.raises(ConfigError) as error:
        check_params(MLPSynthesizer, {"zero_init": True}, "mlp", SYNTHESIZER_ARGUMENTS)
    assert str(error.value) == "mlp: unknown parameter 'zero_init'; accepted: hidden, layers"


def test_a_builder_without_a_readable_signature_is_not_checked():
    check_params(sys.getsizeof, {"anything": 1}, "stage 0", STAGE_ARGUMENTS)  # a C function: nothing to read
