"""workers/stage/compute.py: StageCompute's arithmetic in every mode, against reference steps written here in plain torch.

Each test builds the stage under test and a reference twin with `build_stage` (the same seed gives the same
weights), runs StageCompute the way a worker does, and repeats the step by hand on the twin: one SGD step (Adam
where named) on the gradient the mode prescribes. Tiny stages, a batch of four, exact to 1e-6.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dni.workers.build.builder import StageModules, build_stage
from dni.workers.stage.compute import StageCompute, score_meta
from dni.spec import Mode, OptimizerSpec, StageSpec, SynthesizerSpec

LR = 0.1
SEED = 5
CLASSES = 3
BATCH = 4
WIDTH = 5  # every stage's input and hidden width
HIDDEN = StageSpec("linear_bn_relu", {"features": WIDTH}, SynthesizerSpec("mlp", {"hidden": 8, "layers": 1}))
LAST = StageSpec("linear", {"features": CLASSES})


def build(mode: Mode, index: int, stages: int) -> StageModules:
    last = index == stages - 1
    built = build_stage(LAST if last else HIDDEN, index=index, input_shape=(WIDTH,), mode=mode, num_classes=CLASSES,
                        seed=SEED, is_last=last)
    if built.synthesizer is not None and not built.synthesizer.output.weight.any():
        # the zero-initialised output would predict "no gradient" and hide every mistake: start it elsewhere
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            built.synthesizer.output.weight.copy_(torch.randn(built.synthesizer.output.weight.shape, generator=generator))
    return built


def stage(mode: Mode, index: int = 1, stages: int = 3, window: int = 1, optimizer: str = "sgd") -> tuple[StageCompute, StageModules]:
    """The stage under test (as a worker holds it) and its reference twin with the same weights."""
    last = index == stages - 1
    built = build(mode, index, stages)
    compute = StageCompute(built.module, built.synthesizer, mode=mode, optimizer=OptimizerSpec(optimizer, LR),
                           first=index == 0, loss="cross_entropy" if last else None, num_classes=CLASSES, window=window)
    return compute, build(mode, index, stages)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + seed)
    return torch.randn(BATCH, WIDTH, generator=generator), torch.randint(0, CLASSES, (BATCH,), generator=generator)


def target_like(tensor: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return torch.randn(tensor.shape, generator=torch.Generator().manual_seed(200 + seed))


def sgd(module: nn.Module, grads: list[torch.Tensor] | None = None) -> None:
    """One plain SGD step on the gradients given, else on each parameter's .grad, which it then clears."""
    with torch.no_grad():
        for parameter, grad in zip(module.parameters(), grads or [p.grad for p in module.parameters()]):
            parameter -= LR * grad
            parameter.grad = None


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def assert_same_weights(actual: nn.Module, expected: nn.Module) -> None:
    """Parameters and buffers (BatchNorm's running statistics too) equal."""
    reference = expected.state_dict()
    for name, value in actual.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def can_take_batch(compute: StageCompute) -> bool:
    """Whether the stage's schedule lets it take another batch (its window has room)."""
    return compute.schedule.turn(compute.in_flight, False).batches


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: nn.Module) -> bool:
    """Every parameter changed: the step was not a no-op that any implementation would match."""
    return all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def unchanged(before: list[torch.Tensor], module: nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


# -- sg and cdni -------------------------------------------------------------------------------------------


def test_sg_stage_updates_at_once_with_the_predicted_gradient_and_sends_its_input_gradient_up():
    compute, reference = stage(Mode.SG)
    x, labels = batch()
    initial = snapshot(reference.module)
    h = compute.forward(0, x.clone(), labels)
    upstream = compute.update_after_forward(0)

    x_ref = x.clone().requires_grad_()
    h_ref = reference.module(x_ref)
    h_ref.backward(reference.synthesizer(h_ref.detach(), None).detach())
    sgd(reference.module)
    assert moved(initial, reference.module)
    assert_same(h, h_ref.detach())
    assert_same_weights(compute.module, reference.module)
    assert_same(upstream, x_ref.grad)
    assert list(compute.pending) == [0] and compute.steps == 1


def test_sg_synthesizer_regresses_its_own_prediction_onto_the_target_that_comes_back():
    compute, reference = stage(Mode.SG)
    x, labels = batch()
    compute.forward(0, x.clone(), labels)
    compute.update_after_forward(0)
    h_ref = reference.module(x)
    prediction = reference.synthesizer(h_ref.detach(), None)
    target = target_like(prediction)
    initial = snapshot(reference.synthesizer)

    assert compute.receive_target(0, target) is None, "the target only trains the synthesizer"
    loss = F.mse_loss(prediction, target)
    sgd(reference.synthesizer, torch.autograd.grad(loss, list(reference.synthesizer.parameters())))
    assert moved(initial, reference.synthesizer)
    assert_same_weights(compute.synthesizer, reference.synthesizer)
    assert compute.synthesizer_loss == loss.item()
    assert not compute.pending and compute.staleness == {0: 1}


def test_cdni_synthesizer_sees_the_one_hot_label_beside_the_activation():
    compute, reference = stage(Mode.CDNI)
    x, labels = batch()
    compute.forward(0, x.clone(), labels)
    upstream = compute.update_after_forward(0)

    x_ref = x.clone().requires_grad_()
    h_ref = reference.module(x_ref)
    prediction = reference.synthesizer(h_ref.detach(), F.one_hot(labels, CLASSES).float())
    h_ref.backward(prediction.detach())
    sgd(reference.module)
    assert_same_weights(compute.module, reference.module)
    assert_same(upstream, x_ref.grad)
    target = target_like(prediction)
    compute.receive_target(0, target)
    sgd(reference.synthesizer, torch.autograd.grad(F.mse_loss(prediction, target), list(reference.synthesizer.parameters())))
    assert_same_weights(compute.synthesizer, reference.synthesizer)


def test_the_first_stage_computes_no_input_gradient():
    compute, _ = stage(Mode.SG, index=0)
    x, labels = batch()
    compute.forward(0, x, labels)
    assert compute.update_after_forward(0) is None
    assert not x.requires_grad


def test_adam_is_the_optimizer_when_named():
    compute, reference = stage(Mode.SG, optimizer="adam")
    # fused, as the stage's: Adam amplifies the rounding noise of a bias before BatchNorm (its gradient is ~1e-9),
    # where the fused kernel's rounding differs from the per-parameter loop's
    module_adam = torch.optim.Adam(reference.module.parameters(), lr=LR, fused=True)
    synthesizer_adam = torch.optim.Adam(reference.synthesizer.parameters(), lr=LR, fused=True)
    for step in range(2):
        x, labels = batch(step)
        h = compute.forward(step, x.clone(), labels)
        compute.update_after_forward(step)
        compute.receive_target(step, target_like(h, step))

        h_ref = reference.module(x)
        prediction = reference.synthesizer(h_ref.detach(), None)
        module_adam.zero_grad()
        h_ref.backward(prediction.detach())
        module_adam.step()
        synthesizer_adam.zero_grad()
        F.mse_loss(prediction, target_like(h, step)).backward()
        synthesizer_adam.step()
    assert_same_weights(compute.module, reference.module)
    assert_same_weights(compute.synthesizer, reference.synthesizer)


# -- synthetic loss ---------------------------------------------------------------------------------------------


def test_sl_stage_follows_the_gradient_of_its_squared_loss_prediction_and_sends_that_prediction_up():
    compute, reference = stage(Mode.SL)
    x, labels = batch()
    initial = snapshot(reference.module)
    compute.forward(0, x.clone(), labels)
    upstream = compute.update_after_forward(0)

    h_ref = reference.module(x)
    predicted_loss = reference.synthesizer(h_ref, None).square()
    sgd(reference.module, torch.autograd.grad(predicted_loss.sum(), list(reference.module.parameters()), retain_graph=True))
    assert moved(initial, reference.module)
    assert_same_weights(compute.module, reference.module)
    assert upstream.shape == (BATCH, 1)
    assert_same(upstream, predicted_loss.detach())


def test_sl_synthesizer_regresses_its_loss_prediction_onto_the_next_loss():
    compute, reference = stage(Mode.SL)
    x, labels = batch()
    compute.forward(0, x.clone(), labels)
    compute.update_after_forward(0)
    predicted_loss = reference.synthesizer(reference.module(x), None).square()
    target = target_like(predicted_loss).abs()

    assert compute.receive_target(0, target) is None
    synthesizer = list(reference.synthesizer.parameters())
    sgd(reference.synthesizer, torch.autograd.grad(F.mse_loss(predicted_loss, target), synthesizer))
    assert_same_weights(compute.synthesizer, reference.synthesizer)


# -- backprop and no_bprop --------------------------------------------------------------------------------------


def test_backprop_stage_waits_for_the_true_gradient_before_it_updates():
    compute, reference = stage(Mode.BACKPROP)
    x, labels = batch()
    initial = snapshot(compute.module)
    h = compute.forward(0, x.clone(), labels)
    assert compute.update_after_forward(0) is None
    assert unchanged(initial, compute.module) and not can_take_batch(compute)

    gradient = target_like(h)
    upstream = compute.receive_target(0, gradient)
    x_ref = x.clone().requires_grad_()
    reference.module(x_ref).backward(gradient)
    sgd(reference.module)
    assert_same_weights(compute.module, reference.module)
    assert_same(upstream, x_ref.grad)
    assert can_take_batch(compute) and compute.staleness == {}, "no staleness in the locked mode"


def test_backprop_first_stage_sends_nothing_upstream():
    compute, _ = stage(Mode.BACKPROP, index=0)
    x, labels = batch()
    h = compute.forward(0, x, labels)
    assert compute.receive_target(0, target_like(h)) is None


def test_no_bprop_hidden_stage_never_learns_and_keeps_nothing():
    compute, reference = stage(Mode.NO_BPROP)
    x, labels = batch()
    initial = snapshot(compute.module)
    h = compute.forward(0, x.clone(), labels)
    assert compute.update_after_forward(0) is None
    assert not compute.pending and can_take_batch(compute)
    assert not h.requires_grad
    assert unchanged(initial, compute.module)
    assert_same(h, reference.module(x).detach())
    assert compute.synthesizer is None and compute.interface is None


# -- the last stage ---------------------------------------------------------------------------------------------


def last_stage_reference(reference: StageModules, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example losses, logits, input gradient) after one SGD step on the summed cross-entropy."""
    x_ref = x.clone().requires_grad_()
    logits = reference.module(x_ref)
    losses = F.cross_entropy(logits, labels, reduction="none")
    losses.sum().backward()
    sgd(reference.module)
    return losses.detach(), logits.detach(), x_ref.grad


def test_last_stage_trains_on_the_summed_loss_and_returns_the_true_gradient():
    for mode in (Mode.SG, Mode.CDNI, Mode.BACKPROP):
        compute, reference = stage(mode, index=2)
        x, labels = batch()
        result = compute.train_last(x.clone(), labels)
        losses, logits, gradient = last_stage_reference(reference, x, labels)
        assert_same_weights(compute.module, reference.module)
        assert_same(result.upstream, gradient)
        assert score_meta(result.score.numpy(), result.count) == {
            "loss_sum": float(losses.sum()), "correct": int((logits.argmax(1) == labels).sum()), "count": BATCH}


def test_last_stage_in_sl_returns_the_per_example_losses():
    compute, reference = stage(Mode.SL, index=2)
    x, labels = batch()
    result = compute.train_last(x.clone(), labels)
    losses, _, _ = last_stage_reference(reference, x, labels)
    assert_same_weights(compute.module, reference.module)
    assert result.upstream.shape == (BATCH, 1)
    assert_same(result.upstream, losses[:, None])


def test_last_stage_in_no_bprop_learns_but_sends_nothing_upstream():
    compute, reference = stage(Mode.NO_BPROP, index=2)
    x, labels = batch()
    result = compute.train_last(x.clone(), labels)
    last_stage_reference(reference, x, labels)
    assert_same_weights(compute.module, reference.module)
    assert result.upstream is None


# -- whole networks, window and bookkeeping ---------------------------------------------------------------------


def test_three_sg_stages_compute_one_single_process_dni_step():
    stages = [stage(Mode.SG, index=index) for index in range(3)]
    (first, first_ref), (middle, middle_ref), (last, last_ref) = stages
    x, labels = batch()
    h0 = first.forward(0, x.clone(), labels)  # as the workers pass it along
    assert first.update_after_forward(0) is None
    h1 = middle.forward(0, h0, labels)
    first.receive_target(0, middle.update_after_forward(0))
    middle.receive_target(0, last.train_last(h1, labels).upstream)

    inputs, predictions = [], []
    activation = x
    for _, reference in stages:  # every layer follows its synthesizer's prediction; the last its true loss
        layer_input = activation.detach().requires_grad_()
        h = reference.module(layer_input)
        if reference.synthesizer is None:
            F.cross_entropy(h, labels, reduction="sum").backward()
        else:
            predictions.append(reference.synthesizer(h.detach(), None))
            h.backward(predictions[-1].detach())
        inputs.append(layer_input)
        activation = h
    for _, reference in stages:
        sgd(reference.module)
    for index, (_, reference) in enumerate(stages[:2]):  # each synthesizer regresses onto the next layer's input gradient
        loss = F.mse_loss(predictions[index], inputs[index + 1].grad)
        sgd(reference.synthesizer, torch.autograd.grad(loss, list(reference.synthesizer.parameters())))
    for compute, reference in stages:
        assert_same_weights(compute.module, reference.module)
        if reference.synthesizer is not None:
            assert_same_weights(compute.synthesizer, reference.synthesizer)


def test_three_backprop_stages_compute_one_autograd_step():
    stages = [stage(Mode.BACKPROP, index=index) for index in range(3)]
    (first, _), (middle, _), (last, _) = stages
    x, labels = batch()
    h0 = first.forward(0, x.clone(), labels)
    h1 = middle.forward(0, h0, labels)
    assert first.receive_target(0, middle.receive_target(0, last.train_last(h1, labels).upstream)) is None

    network = nn.Sequential(*(reference.module for _, reference in stages))
    F.cross_entropy(network(x), labels, reduction="sum").backward()
    sgd(network)
    for compute, reference in stages:
        assert_same_weights(compute.module, reference.module)


def test_a_window_bounds_the_batches_in_flight_and_backprop_holds_one():
    unlocked, _ = stage(Mode.SG, window=2)
    locked, _ = stage(Mode.BACKPROP, window=2)
    for compute in (unlocked, locked):
        assert can_take_batch(compute)
        x, labels = batch()
        compute.forward(0, x, labels)
        compute.update_after_forward(0)
    assert can_take_batch(unlocked) and not can_take_batch(locked)
    unlocked.forward(1, *batch(1))
    unlocked.update_after_forward(1)
    assert not can_take_batch(unlocked)


def test_staleness_counts_the_steps_taken_between_a_prediction_and_its_target():
    compute, _ = stage(Mode.SG, window=3)
    for step in range(3):
        h = compute.forward(step, *batch(step))
        compute.update_after_forward(step)
    compute.receive_target(1, target_like(h))
    compute.receive_target(0, target_like(h))
    compute.receive_target(2, target_like(h))
    assert compute.staleness == {1: 1, 2: 1, 0: 1} and compute.steps == 3


def test_a_late_target_trains_the_synthesizer_at_the_weights_that_made_its_prediction():
    """Weight stashing: with two batches in flight, both predictions came from the same synthesizer weights, so
    both targets' gradients are taken there, though the first target moved the weights before the second came."""
    compute, reference = stage(Mode.SG, window=2)
    predictions, targets = [], []
    for step in range(2):
        x, labels = batch(step)
        compute.forward(step, x.clone(), labels)
        compute.update_after_forward(step)
        h_ref = reference.module(x)
        predictions.append(reference.synthesizer(h_ref.detach(), None))
        h_ref.backward(predictions[-1].detach())
        sgd(reference.module)
        targets.append(target_like(predictions[-1], step))
    parameters = list(reference.synthesizer.parameters())
    grads = [torch.autograd.grad(F.mse_loss(p, t), parameters) for p, t in zip(predictions, targets)]
    for step in range(2):
        compute.receive_target(step, targets[step])
        sgd(reference.synthesizer, grads[step])
    assert_same_weights(compute.module, reference.module)
    assert_same_weights(compute.synthesizer, reference.synthesizer)


def test_evaluation_uses_the_running_statistics_and_leaves_the_stage_training():
    compute, reference = stage(Mode.SG)
    compute.forward(0, *batch())  # moves BatchNorm's running statistics away from their start
    reference.module(batch()[0])
    x, labels = batch(1)
    output = compute.evaluate(x, labels)
    assert compute.module.training and not output.requires_grad
    assert_same(output, reference.module.eval()(x).detach())
    assert compute.steps == 1 and list(compute.pending) == [0], "evaluation is no training step"


def test_every_compute_activity_is_timed():
    compute, _ = stage(Mode.SG)
    h = compute.forward(0, *batch())
    compute.update_after_forward(0)
    compute.receive_target(0, target_like(h))
    assert all(compute.time.totals[activity] > 0 for activity in ("forward", "synthetic", "synthesizer", "optimizer"))
    locked, _ = stage(Mode.BACKPROP)
    h = locked.forward(0, *batch())
    locked.receive_target(0, target_like(h))
    assert all(locked.time.totals[activity] > 0 for activity in ("forward", "backward", "optimizer"))


def test_state_holds_the_module_and_the_synthesizer():
    compute, _ = stage(Mode.SG)
    state = compute.state()
    assert {"module.1.weight", "module.2.running_mean", "synthesizer.output.weight", "synthesizer.hidden.0.weight"} <= set(state)
    assert set(state) == {f"module.{k}" for k in compute.module.state_dict()} | {f"synthesizer.{k}" for k in compute.synthesizer.state_dict()}
    last, _ = stage(Mode.SG, index=2)
    assert set(last.state()) == {"module.1.weight", "module.1.bias"}


def test_a_stage_refuses_settings_its_mode_cannot_run_with():
    modules = build(Mode.CDNI, 1, 3)
    with pytest.raises(ValueError, match="cdni conditions the synthesizer on the label and needs num_classes"):
        StageCompute(modules.module, modules.synthesizer, mode=Mode.CDNI)
    with pytest.raises(ValueError, match="a hidden stage in sg needs a synthesizer"):
        StageCompute(modules.module, mode=Mode.SG)


# -- the library page's single-process loop (docs/api.md) -------------------------------------------------------


def documented_loop() -> str:
    """docs/api.md's Python block that builds StageComputes and trains them (it was the README's)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    return next(block for block in blocks if "dni.StageCompute(" in block)


def test_the_documented_loop_steps_every_stage_and_every_synthesizer_learns():
    namespace: dict = {}
    exec(compile(documented_loop(), "docs/api.md", "exec"), namespace)
    stages, steps = namespace["stages"], len(namespace["batches"])
    assert len(stages) == 3 and [stage.synthesizer is None for stage in stages] == [False, False, True]
    for stage in stages:
        assert stage.steps == steps and not stage.pending
        for optimizer in [stage.module_optimizer] + ([stage.interface.trained.optimizer] if stage.synthesizer else []):
            parameters = optimizer.param_groups[0]["params"]
            assert [float(optimizer.state[p]["step"]) for p in parameters] == [steps] * len(parameters)
        if stage.synthesizer is not None:
            assert stage.synthesizer.output.weight.any(), "the zero-initialised synthesizer learnt nothing"


def test_the_documented_graph_loop_trains_both_towers_and_their_synthesizers():
    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    graph = next(block for block in re.findall(r"```python\n(.*?)```", page, re.DOTALL) if 'inputs=["left", "right"]' in block)
    namespace: dict = {}
    exec(compile(documented_loop(), "docs/api.md", "exec"), namespace)
    exec(compile(graph, "docs/api.md", "exec"), namespace)
    left, right, head = namespace["left"], namespace["right"], namespace["head"]
    steps = len(namespace["batches"])
    assert [stage.steps for stage in (left, right, head)] == [steps] * 3
    assert not left.pending and not right.pending, "every target came back along its edge"
    for tower in (left, right):
        assert tower.interface.synthesizer.output.weight.any(), "each edge's synthesizer learnt from its own target"
