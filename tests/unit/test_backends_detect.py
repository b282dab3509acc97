"""`hq worker start --manager detect` inside the allocations of every backend: the id it
reports is the one the server knows the allocation by."""

from __future__ import annotations

from pathlib import Path

import pytest

from hqpy.protocol.messages import ManagerInfo
from hqpy.worker.manager import detect_manager


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"LSB_JOBID": "473713", "HQPY_ALLOCATION_ID": "473713"}, ("LSF", "473713")),
        ({"LSB_JOBID": "473713"}, ("LSF", "473713")),
        ({"JOB_ID": "8", "SGE_ROOT": "/var/lib/gridengine"}, ("SGE", "8")),
        ({"JOB_ID": "8", "SGE_ROOT": "/sge", "HQPY_ALLOCATION_ID": "8"}, ("SGE", "8")),
        ({"HQPY_ALLOCATION_ID": "local-3"}, ("LOCAL", "local-3")),
        ({"HQPY_ALLOCATION_ID": "toy-1-1"}, ("LOCAL", "toy-1-1")),
    ],
)
def test_detect_finds_each_batch_system(env: dict[str, str], expected: tuple[str, str]) -> None:
    assert detect_manager("detect", env) == ManagerInfo(*expected, None)


def test_detect_without_any_allocation_and_job_id_without_sge() -> None:
    assert detect_manager("detect", {}) is None
    assert detect_manager("detect", {"JOB_ID": "8"}) is None  # a JOB_ID alone is no SGE job


def test_detect_htcondor_reads_the_cluster_id_of_the_job_ad(tmp_path: Path) -> None:
    ad = tmp_path / ".job.ad"
    ad.write_text('Cmd = "/bin/bash"\nClusterId = 1351043\nProcId = 0\n')
    env = {"_CONDOR_JOB_AD": str(ad)}
    assert detect_manager("detect", env) == ManagerInfo("HTCONDOR", "1351043", None)
    env["HQPY_ALLOCATION_ID"] = "1351043"
    assert detect_manager("detect", env) == ManagerInfo("HTCONDOR", "1351043", None)
    assert detect_manager("detect", {"_CONDOR_JOB_AD": str(tmp_path / "missing")}) is None


def test_slurm_and_pbs_still_come_first() -> None:
    env = {"PBS_ENVIRONMENT": "PBS_BATCH", "PBS_JOBID": "1.pbs", "LSB_JOBID": "9"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("hqpy.worker.manager.pbs_time_left", lambda job_id: None)
        assert detect_manager("detect", env) == ManagerInfo("PBS", "1.pbs", None)
