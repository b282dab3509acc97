"""Partitioned allocations: `--split` parsing, the parts' groups and tags, the scripts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hqpy.autoalloc import partitions
from hqpy.autoalloc.backends.local import render_local_script
from hqpy.autoalloc.backends.pbs import render_qsub_script
from hqpy.autoalloc.backends.slurm import render_sbatch_script
from hqpy.autoalloc.params import AllocError, allocation_request, validate_params
from hqpy.autoalloc.planner import plan_queue
from hqpy.common.demand import WaitingWork
from hqpy.protocol.messages import QueueParams
from tests.unit.test_planner import cpus, queue_with, request

SPLITS = ("mpi:2:role=leader", "serial:1:role=worker")


def test_split_parses_kind_count_and_tags() -> None:
    assert partitions.parse_split("mpi:2:role=leader") == partitions.Split(
        "mpi", 2, ("role=leader",)
    )
    assert partitions.parse_split("serial:126") == partitions.Split("serial", 126)
    assert partitions.parse_split("serial:1:b,a").tags == ("a", "b")
    assert partitions.parse_split("mpi:2:role=leader").text() == "mpi:2:role=leader"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mpi", "use KIND:COUNT[:TAG,...]"),
        ("gpu:2", "unknown kind `gpu`; use mpi or serial"),
        ("mpi:0", "the node count must be a positive integer"),
        ("mpi:x", "the node count must be a positive integer"),
        ("mpi:2:bad tag", "invalid tag"),
    ],
)
def test_bad_split_is_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        partitions.parse_split(text)


def test_counts_must_add_up_to_workers_per_alloc() -> None:
    assert len(partitions.parse_splits(SPLITS, 3)) == 2
    with pytest.raises(ValueError, match="add up to 3, but --workers-per-alloc is 4"):
        partitions.parse_splits(SPLITS, 4)


def test_queue_validation_names_the_split_error() -> None:
    params = QueueParams(manager="slurm", time_limit=60.0, workers_per_alloc=4, splits=SPLITS)
    with pytest.raises(AllocError, match="Invalid --split: the split node counts add up to 3"):
        validate_params(params)
    validate_params(
        QueueParams(manager="slurm", time_limit=60.0, workers_per_alloc=3, splits=SPLITS)
    )
    with pytest.raises(AllocError, match="not by lsf"):
        validate_params(
            QueueParams(manager="lsf", time_limit=60.0, workers_per_alloc=3, splits=SPLITS)
        )
    with pytest.raises(AllocError, match="cannot be combined with --script-template"):
        validate_params(
            QueueParams(
                manager="slurm",
                time_limit=60.0,
                workers_per_alloc=3,
                splits=SPLITS,
                script_template="#!/bin/bash\n$worker_command\n",
            )
        )


def test_widest_group_is_the_widest_mpi_part() -> None:
    assert partitions.widest_group((), 8) == 8
    assert partitions.widest_group(SPLITS, 3) == 2
    assert partitions.widest_group(("serial:4",), 4) == 1


def test_worker_group_and_filter_tags_from_the_part() -> None:
    assert partitions.worker_group("0:mpi:role=leader", "7", "n1-10") == ("7/0", ["role=leader"])
    assert partitions.worker_group("1:serial", "7", "n1-10") == ("7/1/n1-10", [])
    with pytest.raises(ValueError, match="expected INDEX:KIND"):
        partitions.worker_group("x:mpi", "7", "n1")


def render(manager: str) -> str:
    params = QueueParams(manager=manager, time_limit=3600.0, workers_per_alloc=3, splits=SPLITS)
    req = allocation_request(params, 1, 1, 3, Path("/tmp/w"), instance_dir=Path("/tmp/s/001"))
    render_script = {
        "slurm": render_sbatch_script,
        "pbs": render_qsub_script,
        "local": render_local_script,
    }[manager]
    return render_script(req)


@pytest.mark.parametrize("manager", ["slurm", "pbs", "local"])
def test_scripts_start_each_part_and_are_valid_bash(manager: str, tmp_path: Path) -> None:
    script = render(manager)
    assert "export HQPY_SPLIT=0:mpi:role=leader;" in script
    assert "export HQPY_SPLIT=1:serial:role=worker;" in script
    path = tmp_path / "s.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_slurm_parts_take_node_ranges() -> None:
    script = render("slurm")
    assert "srun --overlap --ntasks=2 --nodes=2 --relative=0 bash -c" in script
    assert "srun --overlap --ntasks=1 --nodes=1 --relative=2 bash -c" in script


def test_pbs_parts_take_ranges_of_the_node_file() -> None:
    script = render("pbs")
    assert "awk '!seen[$0]++' \"$PBS_NODEFILE\"" in script
    assert '"${hq_nodes[@]:0:2}"' in script and '"${hq_nodes[@]:2:1}"' in script


def test_split_queue_submits_whole_allocations_and_serves_its_widest_part() -> None:
    queue = queue_with(backlog=2, workers_per_alloc=3, splits=SPLITS)
    plan = plan_queue(queue, [WaitingWork(request(n_nodes=2), 1)])
    assert plan.sizes == [3]
    plan = plan_queue(queue, [WaitingWork(request(n_nodes=3), 1)])
    assert plan.sizes == [] and plan.rest == [WaitingWork(request(n_nodes=3), 1)]
    plan = plan_queue(queue, [WaitingWork(cpus(1), 1)])
    assert plan.sizes == [3]
