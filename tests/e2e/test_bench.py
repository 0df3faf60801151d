"""`dni bench` runs end to end on tiny configurations: tables, JSON and plots, and a per-worker
accounting of busy and waiting time that adds up to the wall time."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def dni(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dni", *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_accounting_adds_up(configuration: dict) -> None:
    for mode, result in configuration["results"].items():
        for worker in result.get("workers", []):
            assert abs(worker["fractions"]["unaccounted"]) < 0.05, f"{mode} stage {worker['stage']}: {worker['fractions']}"


def test_speedup_on_a_job_with_single_process_and_torch_pipelining_baselines(data_root, tmp_path):
    out = dni("bench", "speedup", "--job", "mnist-smoke", "--iterations", "40", "--modes", "backprop,sg",
              "--data-root", str(data_root), "--results", str(tmp_path))
    assert "single-process plain" in out and "single-process synthetic" in out and "speedup" in out
    folder = next(tmp_path.glob("bench-speedup-*"))
    report = json.loads((folder / "bench.json").read_text())
    (configuration,) = report["configurations"]
    torch_rows = {"torch GPipe (4 micro-batches)", "torch 1F1B (4 micro-batches)"}
    assert set(configuration["results"]) == {"backprop", "sg", "single-process plain", "single-process synthetic", *torch_rows}
    assert configuration["speedup"]["sg"] > 0
    for row in torch_rows:  # 40 steps of 3 stages trained across 3 gloo processes learn well beyond chance
        assert configuration["results"][row]["test_accuracy"] > 0.5, configuration["results"][row]
    for mode in ("backprop", "sg"):
        assert 0 < configuration["results"][mode]["coordinator_cpu_fraction"] < 1
    assert_accounting_adds_up(configuration)
    assert (folder / "mnist_smoke" / "timeline.png").stat().st_size > 10_000


def test_speedup_takes_a_graph_job_and_measures_towers_against_a_chain(data_root, tmp_path):
    out = dni("bench", "speedup", "--job", "examples/two_towers/two_towers.toml", "--iterations", "20", "--modes",
              "backprop,sg", "--data-root", str(data_root), "--no-verify-data", "--results", str(tmp_path / "job"))
    assert "is a graph of stages: no single-process or torch pipelining baselines" in out
    (configuration,) = json.loads(next((tmp_path / "job").glob("bench-speedup-*/bench.json")).read_text())["configurations"]
    assert set(configuration["results"]) == {"backprop", "sg"} and configuration["speedup"]["sg"] > 0
    out = dni("bench", "speedup", "--model", "balanced-towers", "--rounds", "2", "--iterations", "20",
              "--data-root", str(data_root), "--no-verify-data", "--results", str(tmp_path / "towers"))
    folder = next((tmp_path / "towers").glob("bench-towers-*"))
    report = json.loads((folder / "bench.json").read_text())
    assert [set(rates) for rates in report["rounds"]] == [{"graph backprop", "chain backprop", "graph sg"}] * 2
    assert len(report["graph_over_chain"][1]) == 2 and all(ratio > 0 for ratio in report["sg_over_backprop"][1])
    assert (folder / "towers.png").stat().st_size > 0 and "graph backprop / chain backprop:" in out


def test_scaling_with_emulated_stages(data_root, tmp_path):
    out = dni("bench", "speedup", "--model", "balanced-mlp", "--stages", "2,4", "--emulate", "always", "--iterations", "30",
              "--modes", "backprop,sg", "--data-root", str(data_root), "--results", str(tmp_path))
    assert out.count("EMULATED") == 2
    folder = next(tmp_path.glob("bench-speedup-*"))
    report = json.loads((folder / "bench.json").read_text())
    assert [c["stages"] for c in report["configurations"]] == [2, 4]
    for configuration in report["configurations"]:
        assert configuration["emulated"]
        assert configuration["speedup"]["sg"] > 1.0, "sleeping stages overlap when unlocked"
        assert_accounting_adds_up(configuration)
    assert (folder / "scaling.png").stat().st_size > 10_000


def test_transport_and_a_hop_through_the_emulated_link(tmp_path):
    out = dni("bench", "transport", "--count", "20", "--link-delay-ms", "20", "--results", str(tmp_path))
    assert "fastest for activations" in out
    report = json.loads((tmp_path / "bench-transport.json").read_text())
    assert {(row["transport"], row["zero_copy"], row["message"]) for row in report["rows"]} == {
        (transport, zero_copy, message) for transport in ("ipc", "tcp") for zero_copy in (False, True) for message in ("activation", "gradient")}
    assert all(row["rtt_median_ms"] > 0 for row in report["rows"])
    assert "one-way delivery over ipc, emulated link delay 20 ms per hop" in out
    assert [row["message"] for row in report["link_delay"]] == ["activation", "gradient"]
    for row in report["link_delay"]:  # nothing leaves before it is due; how much later is the benchmark's to say
        assert row["hops"] == 40 and row["one_way_min_ms"] >= 20.0 and row["baseline_median_ms"] > 0


@pytest.mark.parametrize("flags, complaint", [
    (["--modes", "backprop,turbo"], "unknown mode turbo"),
    (["--stages", "2,x"], "--stages counts"),
    (["--torch-schedules", "gpipe,zb"], "unknown torch schedule 'zb'"),
    (["--microbatches", "3"], "does not split into 3 micro-batches"),
    (["--link-delay-ms", "0,-5"], "link_delay_ms must be a finite number of milliseconds, 0 or more"),
])
def test_bad_flags_are_named_before_anything_runs(flags, complaint, data_root, tmp_path):
    result = subprocess.run([sys.executable, "-m", "dni", "bench", "speedup", "--model", "balanced-mlp", "--stages", "2",
                             "--iterations", "5", "--data-root", str(data_root), "--results", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and complaint in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("bench-speedup-*/*/*")), "no run was started"
