"""Worker cpu detection with fake environments and a fake cgroup tree (no real hardware)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hqpy.common.resources import ResourceKind
from hqpy.worker.hwdetect import (
    allocation_cpu_count,
    cgroup_cpuset,
    cpus_item,
    detect_resources,
    parse_cpu_list,
    select_cpus,
)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3", {0, 1, 2, 3}), ("0-1,8,10-11\n", {0, 1, 8, 10, 11}), ("5", {5}), ("", set())],
)
def test_parse_cpu_list(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["3-1", "a", "0-99999999999", "-1"])
def test_parse_cpu_list_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_slurm_one_core_allocation_gives_one_cpu() -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "1"}
    assert select_cpus([0, 1, 2, 3], None, env) == [0]


def test_pbs_ncpus_limits_the_cpus() -> None:
    assert select_cpus(range(8), None, {"PBS_JOBID": "1.pbs", "PBS_NCPUS": "3"}) == [0, 1, 2]
    assert select_cpus(range(8), None, {"NCPUS": "2"}) == [0, 1]


def test_slurm_wins_over_pbs_names_and_bad_values_are_ignored() -> None:
    assert allocation_cpu_count({"SLURM_CPUS_ON_NODE": "2", "NCPUS": "5"}) == 2
    assert allocation_cpu_count({"SLURM_CPUS_ON_NODE": "lots", "NCPUS": "5"}) == 5
    assert allocation_cpu_count({"SLURM_CPUS_ON_NODE": "0"}) is None
    assert allocation_cpu_count({}) is None


def test_allocation_larger_than_the_mask_keeps_the_mask() -> None:
    assert select_cpus([2, 3], None, {"SLURM_CPUS_ON_NODE": "16"}) == [2, 3]


def test_cpuset_narrows_the_affinity_mask() -> None:
    assert select_cpus(range(8), {4, 5, 6}, {}) == [4, 5, 6]
    assert select_cpus(range(8), {4, 5, 6}, {"SLURM_CPUS_ON_NODE": "2"}) == [4, 5]
    # A cpuset that shares nothing with the mask (a stale file) is ignored.
    assert select_cpus([0, 1], {7}, {}) == [0, 1]


def _fake_cgroup(tmp_path: Path, proc_text: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(proc_text)
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, root


def test_cgroup_v2_cpuset(tmp_path: Path) -> None:
    proc, root = _fake_cgroup(
        tmp_path,
        "0::/system.slice/slurmstepd.scope/job_5/step_0\n",
        {"system.slice/slurmstepd.scope/job_5/step_0/cpuset.cpus.effective": "2-3\n"},
    )
    assert cgroup_cpuset(proc, root) == {2, 3}


def test_cgroup_v1_cpuset(tmp_path: Path) -> None:
    proc, root = _fake_cgroup(
        tmp_path,
        "4:memory:/slurm/uid_0/job_5\n3:cpuset:/slurm/uid_0/job_5\n0::/\n",
        {"cpuset/slurm/uid_0/job_5/cpuset.cpus": "1\n"},
    )
    assert cgroup_cpuset(proc, root) == {1}


def test_no_cgroup_information(tmp_path: Path) -> None:
    proc, root = _fake_cgroup(tmp_path, "0::/\n", {})
    assert cgroup_cpuset(proc, root) is None
    assert cgroup_cpuset(tmp_path / "missing", root) is None
    proc, root = _fake_cgroup(tmp_path, "0::/x\n", {"x/cpuset.cpus.effective": "garbage"})
    assert cgroup_cpuset(proc, root) is None


def test_cpus_item_kinds() -> None:
    item = cpus_item([0, 1, 2])
    assert (item.kind, item.start, item.end) == (ResourceKind.RANGE, 0, 2)
    item = cpus_item([0, 2])
    assert (item.kind, item.values) == (ResourceKind.LIST, ("0", "2"))


def test_detect_resources_uses_the_given_environment() -> None:
    [cpus] = detect_resources({"cpus"}, {"SLURM_CPUS_ON_NODE": "1"})
    assert cpus.name == "cpus"
    assert cpus.kind == ResourceKind.RANGE
    assert cpus.start == cpus.end
