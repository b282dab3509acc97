"""The worker exec line, script files, names and the backend registry."""

from __future__ import annotations

import stat
from pathlib import Path

import attrs
import pytest
import trio

from hqpy.autoalloc.backends.base import (
    AllocationRequest,
    CancelsAll,
    ChecksScripts,
    SubmitError,
    TracksWorkers,
)
from hqpy.autoalloc.backends.common import (
    allocation_name,
    build_worker_command,
    format_walltime,
    is_simple_command,
    quote_double,
    quote_single,
    write_jobid,
    write_script,
)
from hqpy.autoalloc.backends.local import LocalBackend
from hqpy.autoalloc.backends.pbs import PbsBackend
from hqpy.autoalloc.backends.registry import make_backend, names
from hqpy.autoalloc.backends.slurm import SlurmBackend
from hqpy.common.events import BatchCommandRun
from hqpy.protocol.messages import QueueParams

HQ = ["/opt/hq/bin/hq"]
SERVER_DIR = Path("/srv/hq/001")


def command(params: QueueParams, **kwargs: object) -> str:
    options: dict[str, object] = {
        "hq_argv": HQ,
        "server_dir": SERVER_DIR,
        "manager": params.manager,
        "hqpy_log": None,
    }
    options.update(kwargs)
    return build_worker_command(params, **options)  # type: ignore[arg-type]


def test_worker_command_defaults() -> None:
    params = QueueParams(manager="pbs", time_limit=3600)
    assert command(params) == (
        '/opt/hq/bin/hq worker start --idle-timeout "5m" --manager "pbs" '
        '--server-dir "/srv/hq/001" --on-server-lost "finish-running" '
        '--server-lost-grace "5m" --time-limit "1h"'
    )


def test_worker_command_slurm_manager() -> None:
    params = QueueParams(manager="slurm", time_limit=1800)
    assert '--manager "slurm"' in command(params)
    assert command(params).endswith('--time-limit "30m"')


def test_worker_command_local_backend_uses_detect() -> None:
    params = QueueParams(manager="local", time_limit=60)
    assert '--manager "detect"' in command(params)


def test_worker_command_resources_in_order() -> None:
    params = QueueParams(
        manager="slurm",
        time_limit=3600,
        cpus="2x8",
        resources=("x=sum(100)", "y=range(1-4)", "z=[1,2,4]"),
    )
    assert command(params) == (
        '/opt/hq/bin/hq worker start --idle-timeout "5m" --manager "slurm" '
        '--server-dir "/srv/hq/001" --cpus "2x8" --resource "x=sum(100)" '
        '--resource "y=range(1-4)" --resource "z=[1,2,4]" '
        '--on-server-lost "finish-running" --server-lost-grace "5m" --time-limit "1h"'
    )


def test_worker_command_options() -> None:
    params = QueueParams(
        manager="pbs",
        time_limit=3600,
        idle_timeout=1800,
        worker_time_limit=1800 + 15,
        on_server_lost="stop",
    )
    assert command(params) == (
        '/opt/hq/bin/hq worker start --idle-timeout "30m" --manager "pbs" '
        '--server-dir "/srv/hq/001" --on-server-lost "stop" '
        '--server-lost-grace "5m" --time-limit "30m 15s"'
    )


def test_worker_command_start_stop_wrap_and_log() -> None:
    params = QueueParams(
        manager="slurm",
        time_limit=3600,
        worker_start_cmd="init.sh",
        worker_stop_cmd="unload.sh",
        worker_wrap_cmd="podman run hq",
    )
    assert command(params, hqpy_log="hqpy.autoalloc=debug,hqpy=info") == (
        "init.sh && HQPY_LOG=hqpy.autoalloc=debug,hqpy=info podman run hq "
        '/opt/hq/bin/hq worker start --idle-timeout "5m" --manager "slurm" '
        '--server-dir "/srv/hq/001" --on-server-lost "finish-running" '
        '--server-lost-grace "5m" --time-limit "1h"'
        "; unload.sh"
    )


def test_worker_command_python_module_launcher() -> None:
    params = QueueParams(manager="slurm", time_limit=60)
    line = command(params, hq_argv=["/usr/bin/python3", "-m", "hqpy"])
    assert line.startswith("/usr/bin/python3 -m hqpy worker start --idle-timeout")


def test_worker_command_quotes_odd_paths() -> None:
    params = QueueParams(manager="slurm", time_limit=60)
    line = command(params, hq_argv=["/my dir/hq"], server_dir=Path('/a"b/$x/001'))
    assert line.startswith("'/my dir/hq' worker start")
    assert '--server-dir "/a\\"b/\\$x/001"' in line


def test_worker_command_cpus_override_only_without_queue_cpus() -> None:
    without = QueueParams(manager="local", time_limit=60)
    assert '--cpus "4"' in command(without, cpus_override="4")
    with_cpus = QueueParams(manager="local", time_limit=60, cpus="2")
    line = command(with_cpus, cpus_override="4")
    assert '--cpus "2"' in line
    assert '--cpus "4"' not in line


def test_worker_command_unknown_manager() -> None:
    with pytest.raises(ValueError, match="unknown manager 'moab'"):
        command(QueueParams(manager="moab", time_limit=60))


@pytest.mark.parametrize("manager", ["lsf", "htcondor", "sge"])
def test_worker_command_new_managers_detect_their_allocation(manager: str) -> None:
    # Their scripts export HQPY_ALLOCATION_ID, which `--manager detect` reads.
    assert '--manager "detect"' in command(QueueParams(manager=manager, time_limit=60))


def test_quoting() -> None:
    assert quote_double("5m") == '"5m"'
    assert quote_double('a"b\\c$d`e') == '"a\\"b\\\\c\\$d\\`e"'
    assert quote_single("echo 'hi'") == "'echo '\\''hi'\\'''"


@pytest.mark.parametrize(
    ("line", "simple"),
    [
        ('/bin/hq worker start --cpus "2"', True),
        ("/bin/hq worker start --x 'a;b'", True),
        ("init.sh && /bin/hq worker start", False),
        ("/bin/hq worker start; stop.sh", False),
        ("HQPY_LOG=debug /bin/hq worker start", False),
        ("a | b", False),
        ("unbalanced 'quote", False),
    ],
)
def test_is_simple_command(line: str, simple: bool) -> None:
    assert is_simple_command(line) is simple


def test_allocation_name() -> None:
    assert allocation_name(1, 1, None) == "hq-1-1"
    assert allocation_name(3, 12, None) == "hq-3-12"
    assert allocation_name(1, 2, "foo") == "foo-2"


def test_format_walltime_keeps_hours() -> None:
    assert format_walltime(180) == "00:03:00"
    assert format_walltime(96 * 3600) == "96:00:00"


def request(tmp_path: Path, **changes: object) -> AllocationRequest:
    base = AllocationRequest(
        queue_id=1,
        seq=1,
        name="hq-1-1",
        worker_count=1,
        time_limit=3600,
        additional_args=(),
        worker_command="true",
        workdir=tmp_path / "001",
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


def test_write_script_and_jobid(tmp_path: Path) -> None:
    req = request(tmp_path)
    path = write_script(req, "#!/bin/bash\ntrue\n")
    assert path == tmp_path / "001" / "hq-submit.sh"
    assert path.read_text() == "#!/bin/bash\ntrue\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    write_jobid(req.workdir, "42")
    assert (req.workdir / "jobid").read_text() == "42\n"


async def test_make_backend() -> None:
    assert isinstance(make_backend("slurm"), SlurmBackend)
    assert isinstance(make_backend("PBS", timeout=5), PbsBackend)
    async with trio.open_nursery() as nursery:
        backend = make_backend("local", nursery=nursery)
        assert isinstance(backend, LocalBackend)
        assert backend.manager == "LOCAL"
    for name, manager in [("lsf", "LSF"), ("htcondor", "HTCONDOR"), ("sge", "SGE")]:
        assert make_backend(name).manager == manager


async def test_make_backend_passes_the_observer(tmp_path: Path) -> None:
    seen: list[BatchCommandRun] = []
    backend = make_backend("slurm", timeout=5, observer=seen.append)
    # A submit that cannot start still reaches the observer.
    script = tmp_path / "hq-submit.sh"
    script.write_text("#!/bin/bash\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(tmp_path))
        with pytest.raises(SubmitError, match="sbatch start failed"):
            await backend.submit(request(tmp_path, workdir=tmp_path), script)
    assert [(e.program, e.ok) for e in seen] == [("sbatch", False)]
    async with trio.open_nursery() as nursery:
        local = make_backend("local", nursery=nursery, observer=seen.append)
        assert isinstance(local, LocalBackend)
        await local.check_script(script)
    assert [(e.program, e.ok) for e in seen][1:] == [("bash", True)]


def test_make_backend_errors() -> None:
    assert names()[:6] == ["slurm", "pbs", "local", "lsf", "htcondor", "sge"]
    with pytest.raises(
        ValueError, match="unknown backend 'moab'; choose one of: slurm, pbs, local, lsf, htcondor"
    ):
        make_backend("moab")
    with pytest.raises(ValueError, match="needs a nursery"):
        make_backend("local")


async def test_optional_capabilities() -> None:
    slurm = make_backend("slurm")
    assert not isinstance(slurm, (ChecksScripts, TracksWorkers, CancelsAll))
    async with trio.open_nursery() as nursery:
        local = make_backend("local", nursery=nursery)
        assert isinstance(local, ChecksScripts)
        assert isinstance(local, TracksWorkers)
        assert isinstance(local, CancelsAll)
