"""A site script template (hq #9.6) on a real Slurm: its `-x` parameter and the built-in
placeholders reach the submitted script and the task. Same cluster, helpers and clean-up as
`test_slurm_real.py`; without it this skips."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import HqEnv
from tests.e2e.test_slurm_real import (
    SlurmJobs,
    add_queue,
    alloc_info,
    pytestmark,  # noqa: F401 - the same marks and skip as the other real-Slurm tests
    setup_server,
    wait_job_finished,
)


@pytest.fixture
def slurm_jobs(hq_env: HqEnv) -> Iterator[SlurmJobs]:
    jobs = SlurmJobs(hq_env.root)
    yield jobs
    jobs.cancel_all()


def test_site_template_runs_a_queue_on_real_slurm(hq_env: HqEnv, slurm_jobs: SlurmJobs) -> None:
    setup_server(hq_env)
    template = hq_env.work_dir / "site.sh"
    template.write_text(
        "#!/bin/bash\n$directives\n# site template for $queue_name: $node_count node(s), "
        "$walltime\n$env_setup\nexport FROM_TEMPLATE=$module\n$worker_command\n"
    )
    add_queue(
        hq_env,
        "--time-limit",
        "5m",
        "--idle-timeout",
        "3s",
        "--cpus",
        "1",
        "--name",
        "site",
        "--script-template",
        str(template),
        "-x",
        "module=gcc/12",
    )
    hq_env.command("submit", "--", "bash", "-c", 'echo "$FROM_TEMPLATE|$SLURM_JOB_ID"')
    wait_job_finished(hq_env, 1, 1)
    [allocation] = alloc_info(hq_env)
    output = hq_env.command("job", "cat", "1", "stdout").strip()
    assert output == f"gcc/12|{allocation['id']}"
    script = (Path(allocation["workdir"]) / "hq-submit.sh").read_text()
    assert "#SBATCH --time=00:05:00\n" in script
    assert "# site template for site: 1 node(s), 00:05:00\n" in script
