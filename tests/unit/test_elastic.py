"""coordinator/pools/elastic.py: a torchrun group's run folder is named from the rendezvous id, so a restarted group
(or the same command given again) finds it and resumes; another job's folder or a finished run is refused."""
from __future__ import annotations

import pytest

from dni.coordinator.pools.elastic import launched_folder, release_run_folders
from dni import load_job
from dni.coordinator.pools.rendezvous import Launch
from dni.coordinator.results.folder import RunComplete
from dni.errors import ConfigError


def start(job, environment):
    try:
        return launched_folder(job, Launch.from_environment(environment), None)
    finally:
        release_run_folders()  # as the coordinator's exit does


def test_the_run_folder_is_named_from_the_rendezvous_id_and_a_second_start_resumes_it(tmp_path):
    environment = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                   "TORCHELASTIC_RUN_ID": "job/7"}
    job = load_job("mnist-smoke", {"results": str(tmp_path)})
    folder, attempts = start(job, environment)
    assert folder.path == tmp_path / "mnist_smoke-sg-job_7" and attempts == 1
    again, attempts = start(job, {**environment, "TORCHELASTIC_RESTART_COUNT": "1"})
    assert again.path == folder.path and attempts == 2, "a restarted group finds the same folder"
    with pytest.raises(ConfigError, match="differs in iterations"):
        start(load_job("mnist-smoke", {"results": str(tmp_path), "iterations": 5}), environment)
    folder.write_json("summary.json", {"status": "complete"})
    with pytest.raises(RunComplete, match="already finished"):
        start(job, environment)
    with pytest.raises(ConfigError, match="--rdzv-id"):
        start(job, {**environment, "TORCHELASTIC_RUN_ID": "none"})
