"""The GPU run's results as people read them: a summary table, a picture, and a check that every field is there."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import matplotlib.pyplot as plt

from dni.coordinator.results.plots import save_figure

__all__ = ["missing_fields", "print_summary", "plot_report"]

ROW_FIELDS = {
    "mnist": ("placement", "mode", "devices", "steps", "steady_samples_per_second", "time_to_95", "test_accuracy"),
    "cifar": ("mode", "devices", "steps", "steady_samples_per_second", "test_accuracy", "curve"),
    "scaling": ("stages", "emulated", "backprop_samples_per_second", "sg_samples_per_second", "speedup"),
}
PROFILE_FIELDS = ("compute_ms", "host_to_device_ms", "device_to_host_ms", "socket_ms", "step_ms")
TOP_FIELDS = ("device_name", "dry_run", "budget_seconds", "wall_seconds", "data", "environment", "parts")
ENVIRONMENT_FIELDS = ("device_name", "torch", "cuda", "gpus", "cpu_count", "python")
PARTS = ("tests", "mnist", "cifar", "profile", "scaling")


def missing_fields(report: dict[str, Any]) -> list[str]:
    """Every field a complete report has and this one lacks; a skipped or failed part or row counts as missing."""
    return list(_missing(report))


def _missing(report: dict[str, Any]) -> Iterator[str]:
    yield from (name for name in TOP_FIELDS if name not in report)
    yield from (f"environment.{name}" for name in ENVIRONMENT_FIELDS if name not in report.get("environment", {}))
    parts = report.get("parts", {})
    for part in PARTS:
        record = parts.get(part)
        if record is None or record.get("status") != "ok":
            yield f"parts.{part} ({'absent' if record is None else record.get('status')}: {record and record.get('reason')})"
            continue
        for index, row in enumerate(record.get("rows", [])):
            yield from (f"parts.{part}.rows[{index}].{name}" for name in ROW_FIELDS.get(part, ()) if name not in row)
        for index, stage in enumerate(record.get("stages", [])):
            for path in ("current", "previous"):
                yield from (f"parts.profile.stages[{index}].{path}.{name}" for name in PROFILE_FIELDS if name not in stage.get(path, {}))
    if not parts.get("mnist", {}).get("rows") or not parts.get("cifar", {}).get("rows"):
        yield "parts.mnist.rows / parts.cifar.rows (none)"


def _rate(row: dict[str, Any]) -> str:
    return f"{row['steady_samples_per_second']:,.0f}" if "steady_samples_per_second" in row else "--"


def _accuracy(row: dict[str, Any]) -> str:
    return f"{row['test_accuracy']:.2%}" if "test_accuracy" in row else "--"


def _why_not(row: dict[str, Any]) -> str:
    return row.get("skipped") or row.get("error") or ""


def print_summary(report: dict[str, Any]) -> None:
    parts = report["parts"]
    print(f"\n== GPU acceptance run on {report['device_name']} ({'DRY RUN on CPU, tiny sizes' if report['dry_run'] else 'full'}), "
          f"{report['wall_seconds']:.0f}s of a {report['budget_seconds']:.0f}s budget")
    for name in PARTS:
        record = parts.get(name, {})
        print(f"  part {name:<8} {record.get('status', 'absent'):<8} {record.get('seconds', 0):6.1f}s of {record.get('budget_seconds', 0):5.0f}s  {record.get('reason', '')}")
    tests = parts.get("tests", {})
    if "passed" in tests:
        print(f"\ntests/e2e/test_gpu.py: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped")
    print(f"\nMNIST reference network, 3 stages ({report['data']['mnist']})")
    print(f"{'placement':<10} {'mode':<9} {'steps':>6} {'samples/s':>10} {'to 95%':>8} {'test acc':>9}")
    for row in parts.get("mnist", {}).get("rows", []):
        reach = f"{row['time_to_95']:.1f}s" if row.get("time_to_95") is not None else "--"
        print(f"{row['placement']:<10} {row['mode']:<9} {row.get('steps', 0):>6} {_rate(row):>10} {reach:>8} {_accuracy(row):>9} {_why_not(row)}")
    print(f"\nCIFAR-10 CNN, conv synthesizers ({report['data']['cifar10']})")
    print(f"{'mode':<9} {'steps':>6} {'samples/s':>10} {'test acc':>9}  curve (step: accuracy)")
    for row in parts.get("cifar", {}).get("rows", []):
        curve = ", ".join(f"{step}: {accuracy:.1%}" for step, accuracy in row.get("curve", []))
        print(f"{row['mode']:<9} {row.get('steps', 0):>6} {_rate(row):>10} {_accuracy(row):>9}  {curve} {_why_not(row)}")
    print("\nOne sg step, phase by phase (median ms): current copies vs previous")
    for stage in parts.get("profile", {}).get("stages", []):
        for path in ("current", "previous"):
            times = stage[path]
            print(f"{stage['job']:<12} stage {stage['stage']} {path:<9} compute {times['compute_ms']:7.2f}  host->device {times['host_to_device_ms']:6.2f}  "
                  f"device->host {times['device_to_host_ms']:6.2f}  socket {times['socket_ms']:6.2f}  step {times['step_ms']:7.2f} "
                  f"(repeats {', '.join(f'{t:.2f}' for t in times['step_ms_repeats'])})")
    print(f"\nReal-compute scaling, balanced MLP, {report['environment']['cpu_count']} CPU cores, 1 thread per stage")
    for row in parts.get("scaling", {}).get("rows", []):
        if "speedup" in row:
            print(f"L={row['stages']}: backprop {row['backprop_samples_per_second']:,.0f} samples/s, sg {row['sg_samples_per_second']:,.0f}, "
                  f"speedup {row['speedup']:.2f}x (ideal {row['stages']}x)")
        else:
            print(f"L={row['stages']}: {_why_not(row)}")


def plot_report(report: dict[str, Any], output: Path) -> Path:
    figure, (curves, bars, scaling) = plt.subplots(1, 3, figsize=(16, 4.8))
    parts = report["parts"]
    for row in parts.get("cifar", {}).get("rows", []):
        if row.get("curve"):
            steps, accuracy = zip(*row["curve"])
            curves.plot(steps, accuracy, marker="o", label=f"{row['mode']} ({_rate(row)} samples/s)")
    curves.set_title(f"CIFAR-10 CNN on {report['device_name']}\n({report['data']['cifar10']})", fontsize=9)
    curves.set_xlabel("step")
    curves.set_ylabel("test accuracy")
    _bars(bars, parts.get("mnist", {}).get("rows", []), report["device_name"])
    _scaling(scaling, parts.get("scaling", {}).get("rows", []), report["environment"]["cpu_count"])
    for axes in (curves, bars, scaling):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return save_figure(figure, output)


def _bars(axes: plt.Axes, rows: list[dict[str, Any]], device_name: str) -> None:
    placements = [p for p in ("gpu", "cpu", "auto") if any(r["placement"] == p and "steady_samples_per_second" in r for r in rows)]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    width = 0.8 / max(1, len(placements))
    for offset, placement in enumerate(placements):
        rates = [next((r["steady_samples_per_second"] for r in rows if r["placement"] == placement and r["mode"] == m
                       and "steady_samples_per_second" in r), 0.0) for m in modes]
        positions = [i + offset * width for i in range(len(modes))]
        axes.bar(positions, rates, width, label=f"{placement} workers")
        for x, rate in zip(positions, rates):
            axes.annotate(f"{rate:,.0f}", (x, rate), ha="center", va="bottom", fontsize=7)
    axes.set_xticks([i + width * (len(placements) - 1) / 2 for i in range(len(modes))], modes)
    axes.set_title(f"MNIST reference network, 3 worker processes\n(gpu: all on {device_name})", fontsize=9)
    axes.set_ylabel("steady samples/s")


def _scaling(axes: plt.Axes, rows: list[dict[str, Any]], cores: int) -> None:
    measured = [r for r in rows if "speedup" in r]
    if measured:
        stages = [r["stages"] for r in measured]
        axes.plot(stages, [r["speedup"] for r in measured], marker="o", label="sg / backprop, measured")
        axes.plot(stages, stages, linestyle="--", color="gray", label="ideal (L)")
    axes.set_title(f"Update-unlocking speedup, real compute on {cores} CPU cores", fontsize=9)
    axes.set_xlabel("stages (L)")
    axes.set_ylabel("speedup")
