"""What every allocation script does before its worker line: the exit trap that reports the
allocation's end (hq #13.1), the logging variables (#14.10) and the worker environment (#9.5)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

from hqpy.autoalloc.backends.base import AllocationRequest, ScriptSetup
from hqpy.autoalloc.backends.common import render_prelude
from hqpy.autoalloc.backends.htcondor import render_condor_script
from hqpy.autoalloc.backends.local import render_local_script
from hqpy.autoalloc.backends.lsf import render_bsub_script
from hqpy.autoalloc.backends.pbs import render_qsub_script
from hqpy.autoalloc.backends.sge import render_qsub_sge_script
from hqpy.autoalloc.backends.slurm import render_sbatch_script
from hqpy.autoalloc.params import (
    AllocError,
    allocation_request,
    parse_worker_env,
    script_setup,
    validate_params,
)
from hqpy.cli.report_end import read_tail
from hqpy.protocol.messages import QueueParams

REPORT = '/opt/hq/bin/hq worker report-end --server-dir "/srv/hq/001"'


def request(tmp_path: Path, setup: ScriptSetup, workers: int = 1) -> AllocationRequest:
    return AllocationRequest(
        queue_id=1,
        seq=1,
        name="hq-1-1",
        worker_count=workers,
        time_limit=3600,
        additional_args=(),
        worker_command="/opt/hq/bin/hq worker start",
        workdir=tmp_path / "001",
        setup=setup,
    )


FULL = ScriptSetup(
    report_command=REPORT,
    env_script="/home/u/env.sh",
    exports=(("HQPY_LOG", "debug"), ("RUST_LOG", "hyperqueue=debug"), ("A", 'x "y" $z')),
    worker_dir="/scratch/u/run",
)


def test_prelude_in_order(tmp_path: Path) -> None:
    text = render_prelude(request(tmp_path, FULL), "$SLURM_JOB_ID")
    stderr = tmp_path / "001" / "stderr"
    assert text.splitlines() == [
        f'trap \'hqpy_exit=$?; {REPORT} --allocation "$SLURM_JOB_ID" '
        f'--exit-code "$hqpy_exit" --stderr-file "{stderr}" >/dev/null 2>&1\' EXIT',
        'source "/home/u/env.sh"',
        'export HQPY_LOG="debug"',
        'export RUST_LOG="hyperqueue=debug"',
        'export A="x \\"y\\" \\$z"',
        'mkdir -p "/scratch/u/run" && cd "/scratch/u/run" || exit 1',
    ]


def test_empty_setup_renders_nothing(tmp_path: Path) -> None:
    assert render_prelude(request(tmp_path, ScriptSetup()), "$X") == ""


RENDERERS: dict[str, tuple[Callable[[AllocationRequest], str], str]] = {
    "slurm": (render_sbatch_script, "$SLURM_JOB_ID"),
    "pbs": (render_qsub_script, "$PBS_JOBID"),
    "local": (render_local_script, "$HQPY_ALLOCATION_ID"),
    "lsf": (render_bsub_script, "$LSB_JOBID"),
    "htcondor": (render_condor_script, "$HQPY_ALLOCATION_ID"),
    "sge": (lambda r: render_qsub_sge_script(r, "smp"), "$JOB_ID"),
}


@pytest.mark.parametrize("manager", sorted(RENDERERS))
@pytest.mark.parametrize("workers", [1, 2])
def test_every_backend_renders_the_prelude_before_its_workers(
    tmp_path: Path, manager: str, workers: int
) -> None:
    render, id_var = RENDERERS[manager]
    req = request(tmp_path, FULL, workers)
    text = render(req)
    prelude = render_prelude(req, id_var)
    assert prelude in text
    # Before the first line that starts a worker (directly or through a launcher).
    assert text.index(prelude) < text.index("hq worker start")
    assert f'--allocation "{id_var}"' in text
    # The logging variables are exported, never written before a launcher (`srun X=1 hq`
    # would run a program called `X=1`).
    assert "RUST_LOG=hyperqueue" not in text.split(prelude)[1]
    bash = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert bash.returncode == 0, bash.stderr


def test_script_setup_exports_the_servers_log_variables_then_worker_env(tmp_path: Path) -> None:
    params = QueueParams("slurm", 3600.0, worker_env=("OMP_NUM_THREADS=4", "EMPTY="))
    env = {"HQPY_LOG": "debug", "RUST_LOG": "hyperqueue::server::autoalloc=debug"}
    setup = script_setup(params, tmp_path, env)
    assert setup.exports == (
        ("HQPY_LOG", "debug"),
        ("RUST_LOG", "hyperqueue::server::autoalloc=debug"),
        ("OMP_NUM_THREADS", "4"),
        ("EMPTY", ""),
    )
    assert setup.report_command is not None
    assert setup.report_command.endswith(f'worker report-end --server-dir "{tmp_path}"')
    assert script_setup(params, tmp_path, {}).exports[:1] == (("OMP_NUM_THREADS", "4"),)


def test_python_option_runs_workers_and_the_report_with_that_interpreter(tmp_path: Path) -> None:
    params = QueueParams("local", 3600.0, python="/usr/bin/python3")
    req = allocation_request(params, 1, 1, 1, tmp_path / "w", instance_dir=tmp_path)
    assert req.worker_command.startswith("/usr/bin/python3 -m hqpy worker start")
    assert req.setup.report_command is not None
    assert req.setup.report_command.startswith("/usr/bin/python3 -m hqpy worker report-end")


def test_the_log_variables_reach_a_worker_started_through_a_launcher(tmp_path: Path) -> None:
    # A multi-node Slurm script starts its workers with `srun`: run the rendered script with a
    # stand-in `srun` (runs its command) and `hq` (prints its environment).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n"$@"\n')
    (bin_dir / "hq").write_text('#!/bin/bash\nenv > "$ENV_OUT"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    setup = ScriptSetup(exports=(("RUST_LOG", "hyperqueue=debug"), ("HQPY_LOG", "info")))
    req = request(tmp_path, setup, workers=2)
    req = attrs.evolve(req, worker_command="hq worker start")
    script = tmp_path / "s.sh"
    script.write_text(render_sbatch_script(req))
    out = tmp_path / "env.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ENV_OUT": str(out)}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
    lines = out.read_text().splitlines()
    assert "RUST_LOG=hyperqueue=debug" in lines
    assert "HQPY_LOG=info" in lines


def test_worker_env_must_be_key_value() -> None:
    assert parse_worker_env("A=b=c") == ("A", "b=c")
    for bad in ("A", "=x", "1A=x", "A B=x"):
        with pytest.raises(ValueError, match="is not KEY=VALUE"):
            parse_worker_env(bad)


def test_missing_env_script_interpreter_and_relative_dir_are_refused(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.sh")
    cases = {
        "env_script": (missing, f"Env script `{missing}` does not exist"),
        "python": ("/no/such/python", "Python interpreter `/no/such/python` was not found"),
        "worker_dir": ("rel/dir", "Worker dir `rel/dir` must be an absolute path"),
        "worker_env": (("NOEQUALS",), "Invalid --worker-env: `NOEQUALS` is not KEY=VALUE"),
    }
    for field, (value, message) in cases.items():
        params = QueueParams("local", 3600.0, **{field: value})  # type: ignore[arg-type]
        with pytest.raises(AllocError, match=message.replace("$", r"\$")):
            validate_params(params)
    env_script = tmp_path / "env.sh"
    env_script.write_text("export X=1\n")
    validate_params(
        QueueParams(
            "local", 3600.0, env_script=str(env_script), python="python3", worker_dir="/tmp/w"
        )
    )
    validate_params(QueueParams("local", 3600.0, python=sys.executable))


def test_read_tail_is_bounded_and_starts_at_a_line(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    assert read_tail(path) == ""
    assert read_tail(None) == ""
    path.write_bytes(b"short\n")
    assert read_tail(path) == "short\n"
    path.write_bytes(b"x" * 5000 + b"\nline one\nboom \xff\n")
    tail = read_tail(path, limit=4096)
    assert tail == "line one\nboom \ufffd\n"
    path.write_bytes(b"y" * 10_000)
    assert len(read_tail(path, limit=4096)) == 4096
