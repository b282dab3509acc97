"""Script templates (`--script-template`, `-x`): checks and rendering on every backend."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hqpy.autoalloc.backends.base import AllocationRequest, ScriptSetup
from hqpy.autoalloc.backends.htcondor import render_condor_script
from hqpy.autoalloc.backends.local import render_local_script
from hqpy.autoalloc.backends.lsf import render_bsub_script
from hqpy.autoalloc.backends.pbs import render_qsub_script
from hqpy.autoalloc.backends.sge import render_qsub_sge_script
from hqpy.autoalloc.backends.slurm import render_sbatch_script
from hqpy.autoalloc.templates import (
    BUILTIN_PLACEHOLDERS,
    TemplateError,
    check_template,
    render_allocation_script,
)
from hqpy.protocol.messages import QueueParams

SETUP = ScriptSetup(report_command="hq worker report-end", exports=(("RUST_LOG", "debug"),))


class Renderer:
    def __init__(self, render: Callable[[AllocationRequest], str]) -> None:
        self.render_script = render


RENDERERS: dict[str, Callable[[AllocationRequest], str]] = {
    "slurm": render_sbatch_script,
    "pbs": render_qsub_script,
    "local": render_local_script,
    "lsf": render_bsub_script,
    "htcondor": render_condor_script,
    "sge": lambda r: render_qsub_sge_script(r, "smp"),
}


def request(tmp_path: Path, workers: int) -> AllocationRequest:
    return AllocationRequest(
        queue_id=3,
        seq=1,
        name="hq-3-1",
        worker_count=workers,
        time_limit=5400,
        additional_args=(),
        worker_command="hq worker start && true",
        workdir=tmp_path / "001",
        setup=SETUP,
    )


ALL = "#!/bin/sh\n" + "\n".join(f"{p}=<<<${p}>>>" for p in BUILTIN_PLACEHOLDERS) + "\nx=$acct\n"


@pytest.mark.parametrize("manager", sorted(RENDERERS))
@pytest.mark.parametrize("workers", [1, 2])
def test_template_gets_the_parts_of_the_builtin_script(
    tmp_path: Path, manager: str, workers: int
) -> None:
    backend: Any = Renderer(RENDERERS[manager])
    req = request(tmp_path, workers)
    builtin = render_allocation_script(backend, req, QueueParams(manager, 5400.0))
    params = QueueParams(manager, 5400.0, script_template=ALL, template_params=("acct=p1",))
    text = render_allocation_script(backend, req, params)
    values = dict(re.findall(r"(\w+)=<<<(.*?)>>>", text, re.DOTALL))
    # Each part is a piece of the built-in script, and together they are all of it.
    directives = values["directives"]
    env_setup = values["env_setup"]
    worker_command = values["worker_command"]
    assert builtin.startswith("#!/bin/bash\n" + directives + "\n\n")
    assert env_setup.startswith("trap ")
    assert env_setup.endswith('export RUST_LOG="debug"')
    assert env_setup in builtin
    # Without the set-up, the built-in script is the directives and the worker command
    # (which starts with the allocation id export of LSF, HTCondor and Grid Engine).
    bare = builtin.replace(env_setup + "\n", "")
    assert bare == "#!/bin/bash\n" + directives + "\n\n" + worker_command + "\n"
    assert "hq worker start" in worker_command
    assert {k: v for k, v in values.items() if k not in ("directives", "env_setup")} == {
        "worker_command": worker_command,
        "walltime": "01:30:00",
        "time_limit_seconds": "5400",
        "node_count": str(workers),
        "queue_name": "3",
        "allocation_name": "hq-3-1",
        "allocation_dir": str(tmp_path / "001"),
    }
    assert text.endswith("x=p1\n")


def test_builtin_parts_reassemble_the_slurm_script(tmp_path: Path) -> None:
    backend: Any = Renderer(render_sbatch_script)
    req = request(tmp_path, 2)
    template = "#!/bin/bash\n$directives\n\n$env_setup\n$worker_command\n"
    params = QueueParams("slurm", 5400.0, script_template=template)
    assert render_allocation_script(backend, req, params) == render_sbatch_script(req)


@pytest.mark.parametrize(
    ("template", "params", "message"),
    [
        ("$nope", (), "script template uses `$nope`, which is not a built-in placeholder"),
        ("${acct}", (), "give it with `-x acct=VALUE`"),
        ("a\nprice 5$ each", (), "line 2: a `$` that starts no placeholder (write `$$`"),
        ("$x", ("x",), "-x `x` is not key=value"),
        ("", ("walltime=1",), "-x `walltime` would hide the built-in placeholder `$walltime`"),
    ],
)
def test_check_template_names_the_problem(
    template: str, params: tuple[str, ...], message: str
) -> None:
    with pytest.raises(TemplateError) as info:
        check_template(template, params)
    assert message in str(info.value)


def test_check_template_accepts_builtins_params_and_dollars() -> None:
    check_template("$directives ${walltime} $$HOME $acct", ("acct=p1", "unused=2"))
