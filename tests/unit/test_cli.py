"""coordinator/cli.py: the `dni` command line as a new user meets it: plot, help texts, version, bench defaults, and
what a run stopped by Ctrl-C says."""
from __future__ import annotations

import argparse
import json
import logging
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest

import dni.cli
import dni.coordinator.results.plots
from dni.cli import build_parser, main, package_version
from dni.coordinator.cli import OVERRIDES, job_from_args, report_run
from dni import load_job
from dni.coordinator.results.plots import run_label
from dni.errors import ConfigError, RunInterrupted
from tests.conftest import REPO


def fake_run(folder: Path, mode: str, accuracy: float) -> Path:
    """A run folder as `dni run` leaves it, reduced to what `dni plot` reads."""
    folder.mkdir(parents=True)
    records = [{"step": 100 * (epoch + 1), "epoch": epoch + 1, "test_accuracy": accuracy - 0.1 / (epoch + 1)} for epoch in range(3)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "job.json").write_text(json.dumps({"mode": mode}))
    (folder / "summary.json").write_text(json.dumps({"mode": mode, "test_accuracy": accuracy}))
    return folder


def fake_sequence_run(folder: Path, mode: str, solved: int) -> Path:
    """A finished sequence job's folder, reduced to what `dni plot` reads."""
    folder.mkdir(parents=True)
    curve = [{"batch": batch, "length": 1 + batch // 10, "bits_per_step": 8.0 / (batch + 1)} for batch in range(40)]
    (folder / "summary.json").write_text(json.dumps({"status": "complete", "mode": mode, "truncation": 3,
                                                     "max_length_solved": solved, "curve": curve}))
    return folder


def test_plot_draws_sequence_jobs_curves_labelled_with_the_length_they_solved(tmp_path, capsys):
    runs = [fake_sequence_run(tmp_path / name, mode, solved) for name, mode, solved in [("a", "sg", 3), ("b", "backprop", 2)]]
    main(["plot", *map(str, runs), "-o", str(tmp_path / "curves.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert run_label(runs[0]) == "a (sg, T = 3, length 3 solved)"


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / "runs" / "mnist_fcn-sg-20261127-101500", "sg", 0.97)
    (tmp_path / "runs" / "empty").mkdir()
    fake_sequence_run(tmp_path / "runs" / "copy", "sg", 3)
    for other, message in [("runs/mnist_fcn-backprop-*", "dni plot: runs/mnist_fcn-backprop-* does not exist\n"),
                           ("runs/empty", "dni plot: runs/empty is not a run folder (it has no metrics.jsonl, nor a finished "
                                          "sequence job's curve)\n"),
                           ("runs/copy", "dni plot: a sequence job's curve and a dataset job's accuracy share no axes: "
                                         "plot them apart\n")]:
        with pytest.raises(SystemExit) as exit_:
            main(["plot", str(run.relative_to(tmp_path)), other])
        assert exit_.value.code == 2
        assert capsys.readouterr().err == message
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["copy", "empty", run.name], "nothing written"


def test_plot_writes_beside_the_runs_by_default_and_labels_each_run_by_its_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dni.coordinator.results.plots, "time", types.SimpleNamespace(strftime=lambda form: "20261127-120000"))
    first = fake_run(tmp_path / "runs" / "mnist_fcn-sg-20261127-101500", "sg", 0.9772)
    second = fake_run(tmp_path / "runs" / "mnist_fcn-sg-20261127-111500", "sg", 0.9781)
    main(["plot", "runs/mnist_fcn-sg-20261127-101500", "runs/mnist_fcn-sg-20261127-111500"])
    assert capsys.readouterr().out == "runs/plot-20261127-120000.png\n"
    assert (tmp_path / "runs/plot-20261127-120000.png").stat().st_size > 1000
    main(["plot", "runs/mnist_fcn-sg-20261127-101500"])  # a second plot in the same second keeps the first
    assert capsys.readouterr().out == "runs/plot-20261127-120000-2.png\n"
    assert (tmp_path / "runs/plot-20261127-120000-2.png").is_file()
    assert not (tmp_path / "accuracy.png").exists()
    assert [run_label(first), run_label(second)] == ["mnist_fcn-sg-20261127-101500 (sg, 97.72%)",
                                                     "mnist_fcn-sg-20261127-111500 (sg, 97.81%)"]
    main(["plot", str(first), "-o", str(tmp_path / "compare.png")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "compare.png") and (tmp_path / "compare.png").is_file()


def undocumented(parser: argparse.ArgumentParser, name: str) -> list[str]:
    """Every subcommand without a description and every option or argument without help, under `parser`."""
    found = [] if parser.description else [f"{name}: no description"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [f"{name} {choice.dest}: no help" for choice in action._choices_actions if not choice.help]
            for command, subparser in action.choices.items():
                found += undocumented(subparser, f"{name} {command}")
        elif not action.help:
            found.append(f"{name} {'/'.join(action.option_strings) or action.dest}: no help")
    return found


def test_every_subcommand_has_a_description_and_every_option_help():
    parser = build_parser()
    assert undocumented(parser, "dni") == []
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    assert set(commands.choices) == {"run", "worker", "bench", "keys", "plot"}


def test_version_comes_from_the_package_metadata_else_pyproject(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"dni {metadata.version('dni')}\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dni.cli.metadata, "version", not_installed)
    assert package_version() == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_bench_jobs_default_to_the_packaged_shortcut(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    for bench in ("speedup", "transport"):
        args = build_parser().parse_args(["bench", bench])
        assert args.job == "mnist"
        assert load_job(args.job).name == "mnist_fcn"


def test_dataset_flag_overrides_the_job_files_dataset():
    assert job_from_args(build_parser().parse_args(["run", "mnist", "--dataset", "kmnist"])).dataset == "kmnist"


@pytest.mark.parametrize("flags, message", [
    (["--iterations", "-5"], "^--iterations must not be negative, got -5$"),
    (["--batch-size", "0"], "^--batch-size must be at least 1, got 0$"),
    (["--lr", "-1"], "^--lr must be a positive number, got -1.0$"),
    (["--link-delay-ms", "9000"], r"^--link-delay-ms must be at most 5000 \(an emulated hop, not a pause\), got 9000$"),
    (["--stop-at-accuracy", "2"], r"^--stop-at-accuracy must be a fraction from 0 to 1 \(0: never stop early\), got 2.0$"),
    (["--loss", "hinge"], "^--loss 'hinge' is not one of cross_entropy, multi_margin, bits nor an import path"),
])
def test_a_bad_flag_value_is_refused_naming_the_flag_not_the_job_file(flags, message):
    with pytest.raises(ConfigError, match=message):
        job_from_args(build_parser().parse_args(["run", "mnist", *flags]))


def test_every_flag_of_a_setting_sets_it_and_switches_flip_its_default():
    args = build_parser().parse_args(["run", "mnist", "--no-download", "--record-spans", "--lr", "0.001", "--window", "2"])
    job = job_from_args(args)
    assert (job.download, job.record_spans, job.optimizer.lr, job.window, job.verify_data) == (False, True, 0.001, 2, True)
    assert set(OVERRIDES) >= {"--iterations", "--lr", "--no-verify-data", "--profile", "--mode", "--text"}
    assert all(row.flag and row.help for row in OVERRIDES.values())


def interrupted(error: KeyboardInterrupt):
    def train():
        raise error
    return train


def test_an_interrupted_run_is_no_error_and_says_where_its_results_are_and_how_to_continue(capsys, caplog):
    caplog.set_level(logging.INFO)
    code = report_run(interrupted(RunInterrupted(Path("runs/mnist sg"), 2474)))
    assert code == 130
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [("WARNING", "interrupted; workers stopped")]
    assert capsys.readouterr().out == ("stopped at step 2474; results in runs/mnist sg; "
                                       "continue with: dni run --resume 'runs/mnist sg'\n")


def test_an_interrupted_sequence_job_counts_batches_and_a_launcher_names_its_own_way_to_continue(capsys):
    code = report_run(interrupted(RunInterrupted(Path("runs/copy"), 96, "batch")), again="the same torchrun command")
    assert code == 130
    assert capsys.readouterr().out == "stopped at batch 96; results in runs/copy; continue with: the same torchrun command\n"


def test_an_interrupt_before_the_run_folder_exists_has_no_folder_to_name(capsys, caplog):
    assert report_run(interrupted(KeyboardInterrupt())) == 130
    assert [record.levelname for record in caplog.records] == ["WARNING"] and capsys.readouterr().out == ""
