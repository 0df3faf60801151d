"""The link-delay sweep as people read it: one table, a verdict per unlocked mode, one picture.

Every row names its link ("emulated" when a delay was added) and how its time
to a target was found ("projected" for locked runs trained only for their
rate). A verdict says, delay by delay, whether an unlocked mode reached the
target sooner than locked backprop at the same delay; where a capped run
stopped before that could be told, it says "undetermined" rather than guess.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from dni.coordinator.results.plots import save_figure  # first: it selects the Agg backend

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["compare", "format_time", "plot_link_delay", "print_link_delay", "verdicts"]


def compare(unlocked: dict[str, Any], locked: Optional[dict[str, Any]], key: str) -> dict[str, Any]:
    """Whether `unlocked` reached the target `key` sooner than `locked` (same model and delay): sooner, later or
    undetermined, with both times (None: not reached in its run)."""
    mine = unlocked["time_to_accuracy"][key]
    if locked is None:
        return {"outcome": "undetermined", "seconds": mine, "locked_seconds": None, "why": "no locked run at this delay"}
    theirs = locked["time_to_accuracy"][key]
    result = {"seconds": mine, "locked_seconds": theirs, "locked_how": locked["how"]}
    if mine is not None and theirs is not None:
        return {**result, "outcome": "sooner" if mine < theirs else "later"}
    if mine is not None and locked["how"] == "measured":  # locked trained this long without reaching it
        return {**result, "outcome": "sooner" if mine < locked["wall_seconds"] else "undetermined"}
    if mine is None and theirs is not None and unlocked["wall_seconds"] >= theirs:
        return {**result, "outcome": "later"}  # not reached in the time locked backprop needed
    return {**result, "outcome": "undetermined"}


def verdicts(rows: Sequence[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """For each model and unlocked mode, `compare` at every delay it ran, and the first delay at which it was sooner."""
    key = f"{target:.3f}"
    trained = [row for row in rows if "steps" in row]
    found = []
    for model in dict.fromkeys(row["model"] for row in trained):
        locked = {row["delay_ms"]: row for row in trained if row["model"] == model and row["mode"] == "backprop"}
        for mode in dict.fromkeys(row["mode"] for row in trained if row["model"] == model and row["mode"] != "backprop"):
            chosen = sorted((row for row in trained if row["model"] == model and row["mode"] == mode), key=lambda r: r["delay_ms"])
            outcomes = [{"delay_ms": row["delay_ms"], **compare(row, locked.get(row["delay_ms"]), key)} for row in chosen]
            sooner = [outcome["delay_ms"] for outcome in outcomes if outcome["outcome"] == "sooner"]
            found.append({"model": model, "mode": mode, "target": target, "outcomes": outcomes,
                          "first_sooner_ms": min(sooner) if sooner else None,
                          "never_sooner": all(outcome["outcome"] == "later" for outcome in outcomes)})
    return found


def format_time(row: dict[str, Any], key: str) -> str:
    """A row's time to target `key`: seconds (projected ones so marked), else how far its run got without it."""
    seconds = row["time_to_accuracy"][key]
    if seconds is not None:
        return f"{seconds:.1f} s" + (" projected" if row["how"] == "projected" else "")
    if row["how"] == "projected":
        return "no projection: the reference run did not reach it"
    return f"not reached in {row['steps']} steps / {row['wall_seconds']:.0f} s"


def print_link_delay(report: dict[str, Any]) -> None:
    keys = [f"{target:.3f}" for target in report["targets"]]
    print(f"\n== link-delay sweep, {report['link']}")
    header = f"{'model':<22} {'delay':>7} {'link':<9} {'mode':<9} {'samples/s':>10} {'speedup':>8} {'steps':>6}"
    print(header + "".join(f"  {'time to ' + format(float(key), '.0%'):<38}" for key in keys))
    for row in report["rows"]:
        start = f"{row['model']:<22} {row['delay_ms']:>4g} ms {'emulated' if row['delay_ms'] else 'none':<9} {row['mode']:<9}"
        if "steps" not in row:
            print(f"{start} {'skipped: ' + row['skipped'] if 'skipped' in row else 'FAILED: ' + row['error']}")
            continue
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else ""
        print(f"{start} {row['steady_samples_per_second']:>10,.0f} {speedup:>8} {row['steps']:>6}"
              + "".join(f"  {format_time(row, key):<38}" for key in keys))
    for row in report["rows"]:
        if "projection_check" in row:
            print(f"projection check, {row['model']} backprop at {row['delay_ms']:g} ms: measured / projected "
                  + ", ".join(f"{format(float(key), '.0%')}: {_seconds(row['time_to_accuracy'][key])} / "
                              f"{_seconds(row['projection_check'][key])}" for key in keys))
    for verdict in report["verdicts"]:
        print(_verdict_line(verdict))
    for what, why in report["not_run"].items():
        print(f"{what}: {why}")


def _verdict_line(verdict: dict[str, Any]) -> str:
    steps = ", ".join(f"{o['delay_ms']:g} ms {o['outcome']} ({_seconds(o['seconds'])} vs {_seconds(o['locked_seconds'])}"
                      f"{' projected' if o.get('locked_how') == 'projected' else ''})" for o in verdict["outcomes"])
    if verdict["first_sooner_ms"] is not None:
        conclusion = f"first sooner at {verdict['first_sooner_ms']:g} ms"
    elif verdict["never_sooner"]:
        conclusion = f"never sooner up to {max(o['delay_ms'] for o in verdict['outcomes']):g} ms"
    else:
        conclusion = "not sooner where it could be told"
    return (f"{verdict['model']}: {verdict['mode']} vs locked backprop, time to {verdict['target']:.0%}: {steps} => {conclusion}")


def _seconds(value: Optional[float]) -> str:
    return "not reached" if value is None else f"{value:.1f} s"


def plot_link_delay(rows: Sequence[dict[str, Any]], target: float, output: Path) -> Path:
    """Two panels against the delay: speedup over locked backprop, and time to `target` (hollow triangles: not
    reached by the end of a run, drawn at its length; dashed: projected)."""
    key = f"{target:.3f}"
    figure, (speed, reach) = plt.subplots(1, 2, figsize=(13, 4.8))
    trained = [row for row in rows if "steps" in row]
    for index, line in enumerate(dict.fromkeys((row["model"], row["mode"]) for row in trained)):
        chosen = sorted((row for row in trained if (row["model"], row["mode"]) == line), key=lambda r: r["delay_ms"])
        colour, label = f"C{index % 10}", f"{line[0]}: {line[1]}"
        with_speedup = [row for row in chosen if "speedup" in row and row["mode"] != "backprop"]
        if with_speedup:
            speed.plot([r["delay_ms"] for r in with_speedup], [r["speedup"] for r in with_speedup], "o-", color=colour, label=label)
        reached = [row for row in chosen if row["time_to_accuracy"][key] is not None]
        style = "s--" if line[1] == "backprop" and any(r["how"] == "projected" for r in reached) else "o-"
        reach.plot([r["delay_ms"] for r in reached], [r["time_to_accuracy"][key] for r in reached], style, color=colour, label=label)
        missed = [row for row in chosen if row["time_to_accuracy"][key] is None and row["how"] == "measured"]
        reach.plot([r["delay_ms"] for r in missed], [r["wall_seconds"] for r in missed], "^", color=colour, fillstyle="none", markersize=9)
    delays = sorted({row["delay_ms"] for row in trained})
    for axis in (speed, reach):
        axis.set_xscale("symlog", linthresh=1.0)
        axis.set_xticks(delays, [f"{delay:g}" for delay in delays])
        axis.set_xlabel("emulated link delay per hop (ms)")
        axis.grid(alpha=0.3)
    speed.axhline(1.0, color="k", alpha=0.4, linestyle=":")
    speed.set_ylabel("speedup: steady samples/s over locked backprop")
    reach.set_yscale("log")
    reach.set_ylabel(f"seconds to {target:.0%} test accuracy")
    reach.set_title("dashed: locked, projected from its steps; hollow triangle: not reached in a run that long", fontsize=9)
    for axis in (speed, reach):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle("Emulated link delay on every data hop (held in the sender's queue)")
    return save_figure(figure, output, rect=(0, 0, 1, 0.95))
