"""Emulators of Slurm's and PBS's command-line tools, for the backend and e2e tests.

Each tool (`sbatch`, `squeue`, `scontrol`, `scancel`, `srun`, `qsub`, `qstat`, `qdel`,
`pbsdsh`) is a tiny executable beside this file that calls `main(<tool>, argv)`. They keep their
state in the JSON file named by `HQPY_EMULATOR_STATE` (guarded by `fcntl.flock`), really run the
submitted scripts with bash, and print what the real tools print (formats and their sources:
README.md). Knobs (environment):

- `HQPY_EMULATOR_STATE`: the state file (required);
- `HQPY_EMULATOR_START_DELAY`: seconds a job stays PENDING/Q before it starts (default 0);
- `HQPY_EMULATOR_FAIL_SUBMIT`: `sbatch`/`qsub` print this on stderr and exit 1;
- `HQPY_EMULATOR_GARBAGE=1`: status commands print garbage (exit 0);
- `HQPY_EMULATOR_HANG`: every tool sleeps this many seconds first;
- `HQPY_EMULATOR_HANG_TOOLS`: only these tools (comma-separated) hang;
- `HQPY_EMULATOR_MIN_JOB_AGE`: seconds a finished job stays visible (Slurm MinJobAge; 300);
- `HQPY_EMULATOR_KILL_WAIT`: seconds between SIGTERM and SIGKILL on cancel/timeout (5);
- `HQPY_EMULATOR_LOG`: append one JSON line `{"tool", "argv", "cwd"}` per call.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Job = dict[str, Any]
State = dict[str, Any]

GARBAGE = "<html><body>503 Service Temporarily Unavailable ¯\\_(ツ)_/¯</body></html>\n"

# Internal states; each flavour prints its own words for them.
QUEUED, HELD, RUNNING = "queued", "held", "running"
COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL = (
    "completed",
    "failed",
    "cancelled",
    "timeout",
    "node_fail",
)
ACTIVE = (QUEUED, HELD, RUNNING)

SLURM_LONG = {
    QUEUED: "PENDING",
    HELD: "PENDING",
    RUNNING: "RUNNING",
    COMPLETED: "COMPLETED",
    FAILED: "FAILED",
    CANCELLED: "CANCELLED",
    TIMEOUT: "TIMEOUT",
    NODE_FAIL: "NODE_FAIL",
}
SLURM_SHORT = {
    "PENDING": "PD",
    "RUNNING": "R",
    "COMPLETED": "CD",
    "FAILED": "F",
    "CANCELLED": "CA",
    "TIMEOUT": "TO",
    "NODE_FAIL": "NF",
}


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _host() -> str:
    return socket.gethostname().split(".")[0]


def _log_call(tool: str, argv: list[str]) -> None:
    path = os.environ.get("HQPY_EMULATOR_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"tool": tool, "argv": argv, "cwd": os.getcwd()}) + "\n")


# ---------------------------------------------------------------------------------------------
# State file.


def _state_path() -> Path:
    path = os.environ.get("HQPY_EMULATOR_STATE")
    if not path:
        sys.stderr.write("emulator: HQPY_EMULATOR_STATE is not set\n")
        raise SystemExit(2)
    return Path(path)


@contextlib.contextmanager
def locked_state() -> Iterator[State]:
    """The state, exclusively, written back (atomically) when the block ends without error."""
    path = _state_path()
    with open(str(path) + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state: State = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            state = {}
        state.setdefault("next_id", 1)
        state.setdefault("jobs", {})
        yield state
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)


def _exit_file(job_id: str) -> Path:
    return _state_path().with_name(f"{_state_path().name}.{job_id}.exit")


def _pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (orphaned zombies may wait long for a reaper in containers)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _finish(job: Job, returncode: int, timed_out: bool) -> None:
    job["end_time"] = time.time()
    job["returncode"] = returncode
    if timed_out:
        job["state"] = TIMEOUT
    elif returncode == 0:
        job["state"] = COMPLETED
    else:
        job["state"] = FAILED


def refresh(state: State) -> None:
    """Bring jobs whose launcher died (killed, or ended without updating) up to date."""
    for job_id, job in state["jobs"].items():
        if job["state"] not in (QUEUED, RUNNING) or _pid_alive(job.get("launcher_pid")):
            continue
        if job["state"] == QUEUED and job.get("launcher_pid") is None:
            continue  # just forked, not recorded yet
        exit_file = _exit_file(job_id)
        if job["state"] == RUNNING and exit_file.exists():
            result = json.loads(exit_file.read_text())
            _finish(job, result["returncode"], result["timed_out"])
        else:
            job["state"] = NODE_FAIL
            job["end_time"] = time.time()


def visible_jobs(state: State) -> dict[str, Job]:
    """Jobs the controller still holds: finished ones vanish after MinJobAge."""
    min_age = _env_float("HQPY_EMULATOR_MIN_JOB_AGE", 300)
    now = time.time()
    return {
        job_id: job
        for job_id, job in state["jobs"].items()
        if job["state"] in ACTIVE or now - job["end_time"] <= min_age
    }


# ---------------------------------------------------------------------------------------------
# Starting and stopping jobs.


def _submit(flavor: str, job: Job, prepare: Callable[[Job, str], None]) -> str:
    """Record a job (`prepare` fills in what depends on its id) and fork its launcher."""
    with locked_state() as state:
        number = state["next_id"]
        state["next_id"] = number + 1
        job_id = f"{number}.{_host()}" if flavor == "pbs" else str(number)
        job.update(
            id=job_id,
            flavor=flavor,
            state=HELD if job.get("held") else QUEUED,
            submit_time=time.time(),
            start_time=None,
            end_time=None,
            returncode=None,
            launcher_pid=None,
            pgid=None,
        )
        prepare(job, job_id)
        state["jobs"][job_id] = job
    if job["state"] == QUEUED:
        _fork_launcher(job_id)
    return job_id


def _detach() -> None:
    """In a forked child: own session, stdio on /dev/null (never hold the caller's pipes)."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 1024)


def _fork_launcher(job_id: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _detach()
            _launch(job_id)
        except BaseException:  # a detached child must never return into main()
            code = 1
        finally:
            os._exit(code)
    with locked_state() as state:
        job = state["jobs"][job_id]
        if job.get("launcher_pid") is None:
            job["launcher_pid"] = pid


def _open_output(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _launch(job_id: str) -> None:
    """The launcher: wait for the start delay, run the script, record how it ended."""
    with locked_state() as state:
        state["jobs"][job_id]["launcher_pid"] = os.getpid()
    delay = _env_float("HQPY_EMULATOR_START_DELAY", 0)
    if delay:
        time.sleep(delay)
    with locked_state() as state:
        job = state["jobs"][job_id]
        if job["state"] != QUEUED:
            return  # cancelled (or held) while waiting
        env = dict(os.environ)
        env.update(job["env"])
        env["HQPY_EMULATOR_NODES"] = str(job["nodes"])
        if "PBS_JOBID" in env:
            # PBS lists each node once per chunk slot: twice here, so readers must dedupe.
            node_file = _state_path().with_name(f"{_state_path().name}.nodes.{job_id}")
            nodes = [f"node{i}" for i in range(int(job["nodes"]))]
            node_file.write_text("".join(f"{n}\n{n}\n" for n in nodes))
            env["PBS_NODEFILE"] = str(node_file)
        try:
            out = _open_output(job["stdout"])
            err = _open_output(job["stderr"]) if job["stderr"] != job["stdout"] else os.dup(out)
        except OSError:
            # Slurm: FAILED, Reason=JobLaunchFailure, ExitCode=0:53.
            job.update(state=FAILED, start_time=time.time(), end_time=time.time(), returncode=-53)
            job["reason"] = "JobLaunchFailure"
            return
        argv = ["bash", job["script"]]
        copies = int(job.get("copies", 1))
        if copies > 1:
            # HTCondor's parallel universe: the executable once per slot, `_CONDOR_PROCNO` each.
            loop = 'for i in $(seq 0 $(($1 - 1))); do _CONDOR_PROCNO=$i bash "$0" & done; wait'
            argv = ["bash", "-c", loop, job["script"], str(copies)]
        proc = subprocess.Popen(
            argv,
            cwd=job["cwd"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            process_group=0,
        )
        os.close(out)
        os.close(err)
        job.update(state=RUNNING, start_time=time.time(), pgid=proc.pid)
        time_limit = job.get("time_limit")
    timed_out = False
    try:
        returncode = proc.wait(timeout=time_limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        _terminate_group(proc.pid)
        returncode = proc.wait()
    _exit_file(job_id).write_text(json.dumps({"returncode": returncode, "timed_out": timed_out}))
    with locked_state() as state:
        job = state["jobs"][job_id]
        if job["state"] == RUNNING:
            _finish(job, returncode, timed_out)


def _terminate_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL after the kill wait (Slurm's KillWait)."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + _env_float("HQPY_EMULATOR_KILL_WAIT", 5)
    while time.monotonic() < deadline and _group_alive(pgid):
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def _cancel(job: Job) -> None:
    """Mark the job cancelled and end its process group (in a detached helper, so the
    command returns at once, as scancel and qdel do)."""
    was_running = job["state"] == RUNNING
    job["state"] = CANCELLED
    job["end_time"] = time.time()
    job["was_running"] = was_running
    pgid = job.get("pgid")
    if was_running and pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            try:
                _detach()
                _terminate_group(pgid)
            finally:
                os._exit(0)


def _directives(script: str, prefix: str) -> list[list[str]]:
    """The words of each `#SBATCH`/`#PBS` line, in order, up to the first command line."""
    result = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith(prefix + " "):
            result.append(stripped[len(prefix) :].split())
        elif stripped and not stripped.startswith("#"):
            break
    return result


def _parse_clock(text: str) -> float:
    """`[D-]HH:MM:SS`, `MM:SS`, or minutes (Slurm's `--time=60`)."""
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        seconds = parts[0] * 60
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    return float(days * 86400 + seconds)


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "UNLIMITED"
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600:02}:{s % 3600 // 60:02}:{s % 60:02}"
    return f"{days}-{text}" if days else text


def _fail_submit(tool: str) -> int | None:
    text = os.environ.get("HQPY_EMULATOR_FAIL_SUBMIT")
    if text is None:
        return None
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    return 1


def _garbage() -> bool:
    if os.environ.get("HQPY_EMULATOR_GARBAGE") == "1":
        sys.stdout.write(GARBAGE)
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Slurm.


def _slurm_time(t: float | None) -> str:
    if t is None:
        return "Unknown"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def _nodelist(job: Job) -> str:
    if job["state"] in (QUEUED, HELD) or job.get("start_time") is None:
        return ""
    n = job["nodes"]
    return "n1" if n == 1 else f"n[1-{n}]"


def _slurm_reason(job: Job) -> str:
    state = job["state"]
    if state == HELD:
        return "JobHeldUser"
    if state == QUEUED:
        return "None"
    if state == FAILED:
        return str(job.get("reason", "NonZeroExitCode"))
    if state == TIMEOUT:
        return "TimeLimit"
    return "None"


def _slurm_exit_code(job: Job) -> str:
    rc = job.get("returncode")
    if job["state"] == CANCELLED and job.get("was_running"):
        return "0:15"
    if rc is None:
        return "0:0"
    if rc < 0:
        return f"0:{-rc}"
    return f"{rc}:0"


def _run_time(job: Job) -> float:
    start = job.get("start_time")
    if start is None:
        return 0.0
    end = job.get("end_time") or time.time()
    return max(0.0, float(end - start))


def _end_time(job: Job) -> float | None:
    if job.get("end_time") is not None:
        return float(job["end_time"])
    if job["state"] == RUNNING and job.get("time_limit") is not None:
        return float(job["start_time"] + job["time_limit"])
    return None


def _squeue_duration(seconds: float | None) -> str:
    """squeue's `%M`/`%l`: `0:00`, `1:00`, `1:00:00`, `1-00:00:00`."""
    if seconds is None:
        return "UNLIMITED"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02}:{minutes:02}:{s:02}"
    if hours:
        return f"{hours}:{minutes:02}:{s:02}"
    return f"{minutes}:{s:02}"


_SQUEUE_FIELDS: dict[str, tuple[str, Callable[[Job], str]]] = {
    "i": ("JOBID", lambda j: j["id"]),
    "A": ("JOBID", lambda j: j["id"]),
    "j": ("NAME", lambda j: j["name"]),
    "T": ("STATE", lambda j: SLURM_LONG[j["state"]]),
    "t": ("ST", lambda j: SLURM_SHORT[SLURM_LONG[j["state"]]]),
    "S": (
        "START_TIME",
        lambda j: "N/A" if j.get("start_time") is None else _slurm_time(j["start_time"]),
    ),
    "e": (
        "END_TIME",
        lambda j: "N/A" if j["state"] in (QUEUED, HELD) else _slurm_time(_end_time(j)),
    ),
    "r": ("REASON", _slurm_reason),
    "D": ("NODES", lambda j: str(j["nodes"])),
    "N": ("NODELIST", _nodelist),
    "M": ("TIME", lambda j: _squeue_duration(_run_time(j))),
    "l": ("TIME_LIMIT", lambda j: _squeue_duration(j.get("time_limit"))),
    "P": ("PARTITION", lambda j: "debug"),
    "u": ("USER", lambda j: j["user"]),
    "C": ("CPUS", lambda j: str(j["nodes"])),
    "R": (
        "NODELIST(REASON)",
        lambda j: f"({_slurm_reason(j)})" if j["state"] in (QUEUED, HELD) else _nodelist(j),
    ),
}
_SQUEUE_SPEC = re.compile(r"%(\.?)(\d*)([a-zA-Z%])")
SQUEUE_DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"


def _squeue_render(fmt: str, job: Job | None) -> str:
    """One squeue line (`job=None`: the header) from a `%[.][size]type` format."""

    def field(m: re.Match[str]) -> str:
        right, size, code = m.groups()
        if code == "%":
            return "%"
        header, getter = _SQUEUE_FIELDS.get(code, (code.upper(), lambda j: "(null)"))
        value = header if job is None else str(getter(job))
        if size:
            width = int(size)
            value = value[:width]
            value = value.rjust(width) if right else value.ljust(width)
        return value

    return _SQUEUE_SPEC.sub(field, fmt)


def _opts(argv: list[str], spec: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Parse `--long=value`, `--long value`, `-xvalue`, `-x value` and flags.

    `spec` maps every spelling to a canonical name; a name ending in `!` takes no value.
    """
    values: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        key, value = arg, None
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and arg[:2] in spec:
            key, value = arg[:2], arg[2:]
        name = spec.get(key)
        if name is None:
            rest.append(arg)
            continue
        if name.endswith("!"):
            values[name[:-1]] = "1"
            continue
        if value is None:
            value = argv[i] if i < len(argv) else ""
            i += 1
        values[name] = value
    return values, rest


def sbatch(argv: list[str]) -> int:
    failed = _fail_submit("sbatch")
    if failed is not None:
        return failed
    opts, rest = _opts(argv, {"--parsable": "parsable!"})
    if not rest:
        sys.stderr.write("sbatch: error: Batch script is empty!\n")
        return 1
    script = Path(rest[0])
    try:
        text = script.read_text()
    except OSError:
        sys.stderr.write(f"sbatch: error: Unable to open file {rest[0]}\n")
        return 1
    job: Job = {
        "name": script.name,
        "script": str(script.resolve()),
        "cwd": os.getcwd(),
        "stdout": "slurm-%j.out",
        "stderr": None,
        "time_limit": None,
        "nodes": 1,
        "user": getpass.getuser(),
        "env": {},
    }
    for words in _directives(text, "#SBATCH"):
        for word in words:
            key, _, value = word.partition("=")
            if key in ("--job-name", "-J"):
                job["name"] = value
            elif key in ("--output", "-o"):
                job["stdout"] = value
            elif key in ("--error", "-e"):
                job["stderr"] = value
            elif key in ("--time", "-t"):
                job["time_limit"] = _parse_clock(value)
            elif key in ("--nodes", "-N"):
                job["nodes"] = int(value.split("-")[0])
            elif key == "--hold":
                job["held"] = True
    job_id = _submit_slurm(job)
    sys.stdout.write(f"{job_id}\n" if "parsable" in opts else f"Submitted batch job {job_id}\n")
    return 0


def _submit_slurm(job: Job) -> str:
    def prepare(job: Job, job_id: str) -> None:
        for key in ("stdout", "stderr"):
            if job[key] is not None:
                path = job[key].replace("%j", job_id).replace("%x", job["name"])
                job[key] = os.path.join(job["cwd"], path)
        if job["stderr"] is None:
            job["stderr"] = job["stdout"]
        job["env"] = {
            "SLURM_JOB_ID": job_id,
            "SLURM_JOBID": job_id,
            "SLURM_JOB_NAME": job["name"],
            "SLURM_JOB_NUM_NODES": str(job["nodes"]),
            "SLURM_SUBMIT_DIR": job["cwd"],
        }

    return _submit("slurm", job, prepare)


def _slurm_jobs(job_ids: list[str]) -> tuple[dict[str, Job], bool]:
    """Visible jobs (refreshed), and whether a `--jobs` filter matched nothing."""
    with locked_state() as state:
        refresh(state)
        jobs = visible_jobs(state)
    if job_ids:
        selected = {j: jobs[j] for j in job_ids if j in jobs}
        return selected, not selected
    return jobs, False


def squeue(argv: list[str]) -> int:
    if _garbage():
        return 0
    opts, _ = _opts(
        argv,
        {
            "-h": "noheader!",
            "--noheader": "noheader!",
            "-t": "states",
            "--states": "states",
            "-o": "format",
            "--format": "format",
            "-j": "jobs",
            "--jobs": "jobs",
            "-u": "user",
            "--user": "user",
            "-a": "all!",
            "--all": "all!",
        },
    )
    ids = [j for j in opts.get("jobs", "").split(",") if j]
    jobs, nothing = _slurm_jobs(ids)
    if nothing:
        sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n")
        return 1
    states = opts.get("states", "").upper()
    if states != "ALL":
        wanted = set(states.split(",")) if states else {"PENDING", "RUNNING"}
        wanted |= {SLURM_SHORT.get(s, s) for s in wanted}
        jobs = {
            k: j
            for k, j in jobs.items()
            if SLURM_LONG[j["state"]] in wanted or SLURM_SHORT[SLURM_LONG[j["state"]]] in wanted
        }
    fmt = opts.get("format", SQUEUE_DEFAULT_FORMAT)
    lines = [] if "noheader" in opts else [_squeue_render(fmt, None)]
    # Real squeue's default order: by state name, then by priority (= submission order here).
    order = sorted(jobs.values(), key=lambda j: (SLURM_LONG[j["state"]], int(j["id"])))
    lines += [_squeue_render(fmt, job) for job in order]
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def _scontrol_show_job(job: Job) -> str:
    state = SLURM_LONG[job["state"]]
    started = job.get("start_time")
    if job["state"] == CANCELLED and started is None:
        started = job["end_time"]
    end = _end_time(job)
    if job["state"] == CANCELLED and not job.get("was_running"):
        end = job["end_time"]
    nodes = job["nodes"]
    num_nodes = f"{nodes}-{nodes}" if job["state"] in (QUEUED, HELD) else str(nodes)
    submit = _slurm_time(job["submit_time"])
    nodelist = _nodelist(job)
    lines = [
        f"JobId={job['id']} JobName={job['name']}",
        "   UserId=root(0) GroupId=root(0) MCS_label=N/A"
        if job["user"] == "root"
        else f"   UserId={job['user']}({os.getuid()}) GroupId={job['user']}({os.getgid()})"
        " MCS_label=N/A",
        f"   Priority={4294901760 - int(job['id'])} Nice=0 Account=(null) QOS=(null)",
        f"   JobState={state} Reason={_slurm_reason(job)} Dependency=(null)",
        f"   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode={_slurm_exit_code(job)}",
        f"   RunTime={_hms(_run_time(job))} TimeLimit={_hms(job.get('time_limit'))} TimeMin=N/A",
        f"   SubmitTime={submit} EligibleTime={submit}",
        f"   AccrueTime={submit}",
        f"   StartTime={_slurm_time(started)} EndTime={_slurm_time(end)} Deadline=N/A",
        f"   SuspendTime=None SecsPreSuspend=0 LastSchedEval={_slurm_time(started or job['submit_time'])} Scheduler=Main",  # noqa: E501
        "   Partition=debug AllocNode:Sid=localhost:1",
        "   ReqNodeList=(null) ExcNodeList=(null)",
        f"   NodeList={nodelist}",
    ]
    if nodelist:
        lines.append("   BatchHost=n1")
    lines += [
        f"   NumNodes={num_nodes} NumCPUs={nodes} NumTasks={nodes} CPUs/Task=1 ReqB:S:C:T=0:0:*:*",
        f"   TRES=cpu={nodes},node={nodes},billing={nodes}",
        "   Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*",
        "   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0",
        "   Features=(null) DelayBoot=00:00:00",
        "   OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)",
        f"   Command={job['script']}",
        f"   WorkDir={job['cwd']}",
        f"   StdErr={job['stderr']}",
        "   StdIn=/dev/null",
        f"   StdOut={job['stdout']}",
        "   Power=",
        "   ",
        "",
    ]
    return "\n".join(lines) + "\n"


def scontrol(argv: list[str]) -> int:
    if argv[:1] == ["ping"]:
        sys.stdout.write(f"Slurmctld(primary) at {_host()} is UP\n")
        return 0
    if _garbage():
        return 0
    if len(argv) >= 3 and argv[0] == "show" and argv[1] in ("job", "jobs"):
        jobs, nothing = _slurm_jobs([argv[2]])
        if nothing:
            sys.stderr.write("slurm_load_jobs error: Invalid job id specified\n")
            return 1
        sys.stdout.write(_scontrol_show_job(jobs[argv[2]]))
        return 0
    sys.stderr.write(f"scontrol: error: Invalid command: {' '.join(argv)}\n")
    return 1


def scancel(argv: list[str]) -> int:
    # Silent with rc 0 for running, pending, finished and unknown ids alike.
    ids = [a for a in argv if not a.startswith("-")]
    with locked_state() as state:
        refresh(state)
        for job_id in ids:
            job = state["jobs"].get(job_id)
            if job is not None and job["state"] in ACTIVE:
                _cancel(job)
    return 0


def srun(argv: list[str]) -> int:
    """Run the command `--ntasks` times at once (one per fake node); the worst exit status."""
    opts, rest = _opts(
        argv,
        {
            "--ntasks": "ntasks",
            "-n": "ntasks",
            "--nodes": "nodes",
            "-N": "nodes",
            "--overlap": "o!",
            "--relative": "relative",
        },
    )
    count = int(opts.get("ntasks") or opts.get("nodes") or 1)
    return _run_copies(rest, count, "SLURM_PROCID")


def _run_copies(command: list[str], count: int, rank_var: str) -> int:
    if not command:
        sys.stderr.write("emulator: no command given\n")
        return 1
    procs = [
        subprocess.Popen(command, env={**os.environ, rank_var: str(rank)}) for rank in range(count)
    ]
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


# ---------------------------------------------------------------------------------------------
# PBS (PBS Pro / OpenPBS).

PBS_VERSION = "23.06.06"


def _pbs_time(t: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(t))


def _pbs_letter(job: Job) -> str:
    return {QUEUED: "Q", HELD: "H", RUNNING: "R"}.get(job["state"], "F")


def _pbs_exit_status(job: Job) -> int | None:
    state = job["state"]
    if state == TIMEOUT:
        return -29  # JOB_EXEC_KILL_WALLTIME
    if state == CANCELLED:
        return 271 if job.get("was_running") else None  # 256 + SIGTERM
    if state == NODE_FAIL:
        return -3
    rc = job.get("returncode")
    if rc is None:
        return None
    return 256 - int(rc) if rc < 0 else int(rc)


def _pbs_job_json(job: Job) -> dict[str, Any]:
    host = _host()
    letter = _pbs_letter(job)
    data: dict[str, Any] = {
        "Job_Name": job["name"],
        "Job_Owner": f"{job['user']}@{host}",
    }
    if job.get("start_time") is not None:
        data["resources_used"] = {
            "cpupercent": 0,
            "cput": "00:00:00",
            "mem": "0kb",
            "ncpus": job["nodes"],
            "vmem": "0kb",
            "walltime": _hms(_run_time(job)),
        }
    data.update(
        {
            "job_state": letter,
            "queue": "workq",
            "server": host,
            "Checkpoint": "u",
            "ctime": _pbs_time(job["submit_time"]),
            "Error_Path": f"{host}:{job['stderr']}",
        }
    )
    if letter == "R":
        data["exec_host"] = "+".join(f"n{i + 1}/0" for i in range(job["nodes"]))
        data["exec_vnode"] = "+".join(f"(n{i + 1}:ncpus=1)" for i in range(job["nodes"]))
    data.update(
        {
            "Hold_Types": "u" if letter == "H" else "n",
            "Join_Path": "n",
            "Keep_Files": "n",
            "Mail_Points": "a",
            "mtime": _pbs_time(job.get("end_time") or job.get("start_time") or job["submit_time"]),
            "Output_Path": f"{host}:{job['stdout']}",
            "Priority": 0,
            "qtime": _pbs_time(job["submit_time"]),
            "Rerunable": "True",
            "Resource_List": {
                "ncpus": job["nodes"],
                "nodect": job["nodes"],
                "place": "scatter",
                "select": job["nodes"],
                **({"walltime": _hms(job["time_limit"])} if job.get("time_limit") else {}),
            },
        }
    )
    if job.get("start_time") is not None:
        data["stime"] = _pbs_time(job["start_time"])
        data["session_id"] = job.get("pgid") or 0
    data["substate"] = {"Q": 10, "H": 20, "R": 42}.get(letter, 92)
    data["Variable_List"] = {
        "PBS_O_HOME": os.environ.get("HOME", "/root"),
        "PBS_O_WORKDIR": job["cwd"],
        "PBS_O_SYSTEM": "Linux",
        "PBS_O_QUEUE": "workq",
        "PBS_O_HOST": host,
    }
    data["etime"] = _pbs_time(job["submit_time"])
    if letter in ("R", "F") and job.get("start_time") is not None:
        data["run_count"] = 1
    exit_status = _pbs_exit_status(job)
    if letter == "F" and exit_status is not None:
        data["Exit_status"] = exit_status
    data["Submit_arguments"] = job["script"]
    data["project"] = "_pbs_project_default"
    return data


def cjson_print(value: Any, depth: int = 0) -> str:
    """JSON as cJSON's `cJSON_Print` formats it (OpenPBS's `qstat -F json` uses it): tabs for
    indentation, `"key":<TAB>value`, empty objects as `{\\n<tabs>}`."""
    pad = "\t" * (depth + 1)
    if isinstance(value, dict):
        if not value:
            return "{\n" + "\t" * depth + "}"
        items = [
            f"{pad}{json.dumps(k, ensure_ascii=False)}:\t{cjson_print(v, depth + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + "\t" * depth + "}"
    if isinstance(value, list):
        return "[" + ", ".join(cjson_print(v, depth + 1) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def qsub(argv: list[str]) -> int:
    failed = _fail_submit("qsub")
    if failed is not None:
        return failed
    opts, rest = _opts(argv, {"-h": "held!"})
    if not rest:
        sys.stderr.write("qsub: no script file given\n")
        return 2
    script = Path(rest[0])
    try:
        text = script.read_text()
    except OSError:
        sys.stderr.write(f"qsub: could not open script file {rest[0]}\n")
        return 2
    cwd = os.getcwd()
    job: Job = {
        "name": script.name,
        "script": str(script.resolve()),
        "cwd": cwd,
        "stdout": None,
        "stderr": None,
        "time_limit": None,
        "nodes": 1,
        "user": getpass.getuser(),
        "held": "held" in opts,
    }
    for words in _directives(text, "#PBS"):
        it = iter(words)
        for word in it:
            if word == "-N":
                job["name"] = next(it, job["name"])
            elif word == "-o":
                job["stdout"] = next(it, None)
            elif word == "-e":
                job["stderr"] = next(it, None)
            elif word == "-h":
                job["held"] = True
            elif word == "-l":
                for resource in next(it, "").split(","):
                    key, _, value = resource.partition("=")
                    if key == "walltime":
                        job["time_limit"] = _parse_clock(value)
                    elif key == "select":
                        job["nodes"] = int(value.split(":")[0])

    def prepare(job: Job, job_id: str) -> None:
        number = job_id.split(".")[0]
        job["stdout"] = os.path.join(cwd, job["stdout"] or f"{job['name']}.o{number}")
        job["stderr"] = os.path.join(cwd, job["stderr"] or f"{job['name']}.e{number}")
        job["env"] = {
            "PBS_JOBID": job_id,
            "PBS_ENVIRONMENT": "PBS_BATCH",
            "PBS_JOBNAME": job["name"],
            "PBS_O_WORKDIR": cwd,
            "PBS_QUEUE": "workq",
        }

    job_id = _submit("pbs", job, prepare)
    sys.stdout.write(job_id + "\n")
    return 0


def _pbs_lookup(jobs: dict[str, Job], job_id: str) -> Job | None:
    """PBS accepts `1`, `1.server` (and the full name) for the same job."""
    number = job_id.split(".")[0]
    for key, job in jobs.items():
        if key == job_id or key.split(".")[0] == number:
            return job
    return None


def qstat(argv: list[str]) -> int:
    if _garbage():
        return 0
    opts, ids = _opts(argv, {"-f": "full!", "-x": "history!", "-F": "format", "-w": "wide!"})
    with locked_state() as state:
        refresh(state)
        jobs = visible_jobs(state)
    rc = 0
    selected: list[Job] = []
    if ids:
        for job_id in ids:
            job = _pbs_lookup(jobs, job_id)
            if job is None:
                sys.stderr.write(f"qstat: Unknown Job Id {job_id}\n")
                rc = 153
            elif job["state"] not in ACTIVE and "history" not in opts:
                sys.stderr.write(
                    f"qstat: {job['id']} Job has finished, use -x or -H to obtain historical "
                    "job information\n"
                )
                rc = 35
            else:
                selected.append(job)
    else:
        selected = [j for j in jobs.values() if j["state"] in ACTIVE or "history" in opts]
    if opts.get("format") == "json":
        doc: dict[str, Any] = {
            "timestamp": int(time.time()),
            "pbs_version": PBS_VERSION,
            "pbs_server": _host(),
        }
        if selected:
            doc["Jobs"] = {job["id"]: _pbs_job_json(job) for job in selected}
        sys.stdout.write(cjson_print(doc) + "\n")
    elif "full" in opts:
        for job in selected:
            sys.stdout.write(f"Job Id: {job['id']}\n")
            for key, value in _pbs_job_json(job).items():
                if isinstance(value, dict):
                    for sub, v in value.items():
                        sys.stdout.write(f"    {key}.{sub} = {v}\n")
                else:
                    sys.stdout.write(f"    {key} = {value}\n")
            sys.stdout.write("\n")
    elif selected:
        sys.stdout.write(
            "Job id            Name             User              Time Use S Queue\n"
            "----------------  ---------------- ----------------  -------- - -----\n"
        )
        for job in selected:
            sys.stdout.write(
                f"{job['id'][:16]:<16}  {job['name'][:16]:<16} {job['user'][:16]:<16}  "
                f"{'00:00:00':>8} {_pbs_letter(job)} workq\n"
            )
    return rc


def qdel(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    rc = 0
    with locked_state() as state:
        refresh(state)
        jobs = visible_jobs(state)
        for job_id in ids:
            job = _pbs_lookup(jobs, job_id)
            if job is None:
                sys.stderr.write(f"qdel: Unknown Job Id {job_id}\n")
                rc = 153
            elif job["state"] not in ACTIVE:
                sys.stderr.write(f"qdel: Job has finished {job_id}\n")
                rc = 35
            else:
                _cancel(job)
    return rc


def pbsdsh(argv: list[str]) -> int:
    """`pbsdsh -- cmd...`: the command once per node of the job (`select`).

    `bash -l` runs as plain `bash`: a login shell resets `PATH` from /etc/profile, and the
    emulators are only on the test's `PATH` (a real cluster's profile puts PBS on it).
    """
    host = None
    if argv[:1] == ["-h"]:
        # `pbsdsh -h HOST -- cmd`: once, on that node of `$PBS_NODEFILE`.
        host, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv[:2] == ["bash", "-l"]:
        argv = ["bash", *argv[2:]]
    if host is not None:
        nodes = Path(os.environ["PBS_NODEFILE"]).read_text().split()
        if host not in nodes:
            sys.stderr.write(f"pbsdsh: host {host} is not in the job\n")
            return 1
        rank = list(dict.fromkeys(nodes)).index(host)
        return subprocess.call(argv, env={**os.environ, "PBS_TASKNUM": str(rank)})
    count = int(os.environ.get("HQPY_EMULATOR_NODES", "1"))
    return _run_copies(argv, count, "PBS_TASKNUM")


# ---------------------------------------------------------------------------------------------
# LSF (IBM Spectrum LSF 10.1; formats: README.md).

LSF_STAT = {
    QUEUED: "PEND",
    HELD: "PSUSP",
    RUNNING: "RUN",
    COMPLETED: "DONE",
    FAILED: "EXIT",
    CANCELLED: "EXIT",
    TIMEOUT: "EXIT",
    NODE_FAIL: "ZOMBI",
}


def _lsf_time(t: float | None, suffix: str = "") -> str:
    if t is None:
        return ""
    return time.strftime("%b %d %H:%M", time.localtime(t)) + suffix


def _saved_script(text: str, tool: str) -> Path:
    """A script read from stdin, kept beside the state file (as LSF spools it)."""
    path = _state_path().with_name(f"{_state_path().name}.{tool}.{os.getpid()}.{time.time_ns()}")
    path.write_text(text)
    return path


def bsub(argv: list[str]) -> int:
    """`bsub < script` (or `bsub script`): `#BSUB -J -o -e -W -n` are read."""
    failed = _fail_submit("bsub")
    if failed is not None:
        return 255
    if argv:
        try:
            text = Path(argv[-1]).read_text()
        except OSError:
            sys.stderr.write(f"{argv[-1]}: No such file or directory. Job not submitted.\n")
            return 255
    else:
        text = sys.stdin.read()
    script = _saved_script(text, "bsub")
    cwd = os.getcwd()
    job: Job = {
        "name": "hq-submit",
        "script": str(script),
        "cwd": cwd,
        "stdout": os.devnull,
        "stderr": os.devnull,
        "time_limit": None,
        "nodes": 1,
        "user": getpass.getuser(),
    }
    for words in _directives(text, "#BSUB"):
        it = iter(words)
        for word in it:
            if word == "-J":
                job["name"] = next(it, job["name"])
            elif word in ("-o", "-oo"):
                job["stdout"] = next(it, job["stdout"])
            elif word in ("-e", "-eo"):
                job["stderr"] = next(it, job["stderr"])
            elif word == "-W":
                value = next(it, "")
                hours, _, minutes = value.rpartition(":")
                job["time_limit"] = float((int(hours or 0) * 60 + int(minutes)) * 60)
            elif word == "-n":
                job["nodes"] = int(next(it, "1"))
            elif word == "-H":
                job["held"] = True  # PSUSP until `bresume` (hqpy only cancels it)

    def prepare(job: Job, job_id: str) -> None:
        for key in ("stdout", "stderr"):
            job[key] = os.path.join(cwd, job[key].replace("%J", job_id))
        job["env"] = {
            "LSB_JOBID": job_id,
            "LSB_JOBNAME": job["name"],
            "LSB_QUEUE": "normal",
            "LSB_HOSTS": " ".join(f"n{i + 1}" for i in range(job["nodes"])),
        }

    job_id = _submit("lsf", job, prepare)
    sys.stdout.write(f"Job <{job_id}> is submitted to default queue <normal>.\n")
    return 0


def _lsf_field(job: Job, field: str) -> str:
    state = job["state"]
    ended = state not in ACTIVE
    if field == "jobid":
        return str(job["id"])
    if field == "stat":
        return LSF_STAT[state]
    if field == "job_name":
        return str(job["name"])
    if field == "submit_time":
        return _lsf_time(job["submit_time"])
    if field == "start_time":
        return _lsf_time(job.get("start_time"))
    if field == "finish_time":
        if ended:
            return _lsf_time(job.get("end_time"), " L")
        limit = job.get("time_limit")
        start = job.get("start_time")
        return _lsf_time(start + limit, " E") if start and limit else ""
    if field == "exit_code":
        rc = job.get("returncode")
        return "" if rc in (None, 0) else str(256 + rc if rc < 0 else rc)
    if field == "exec_host":
        return ":".join(f"n{i + 1}" for i in range(job["nodes"])) if job.get("start_time") else ""
    if field == "pend_reason":
        # Texts of LSF 10.1's pending-reason list; `bjobs -json` gives "" when there is none.
        if state == QUEUED:
            return "New job is waiting for scheduling;"
        if state == HELD:
            return "The job was suspended by the user while pending;"
        return ""
    return "-"


def blaunch(argv: list[str]) -> int:
    """`blaunch [-z "hosts" | -u hostfile] cmd...`: the command once per slot of the job."""
    opts, rest = _opts(argv, {"-z": "hosts", "-u": "hostfile"})
    count = int(os.environ.get("HQPY_EMULATOR_NODES", "1"))
    if "hosts" in opts:
        count = len(opts["hosts"].split())
    return _run_copies(rest, count, "LSF_PM_TASKID")


def bjobs(argv: list[str]) -> int:
    """`bjobs [-noheader] -o "fields [delimiter='c']" [-json] ids...`; unknown ids: `Job <N> is
    not found` (stderr; a JSON record with `ERROR`), exit 255 when some ids were found."""
    if _garbage():
        return 0
    opts, ids = _opts(argv, {"-o": "format", "-json": "json!", "-noheader": "noheader!"})
    spec = opts.get("format", "jobid stat job_name")
    delimiter = " "
    match = re.search(r"delimiter='(.)'", spec)
    if match:
        delimiter = match.group(1)
        spec = spec[: match.start()]
    fields = [f.split(":")[0].lower() for f in spec.split()]
    with locked_state() as state:
        refresh(state)
        jobs = {k: j for k, j in visible_jobs(state).items() if j.get("flavor") == "lsf"}
    if not ids:
        ids = [k for k, j in jobs.items() if j["state"] in ACTIVE]
        if not ids:
            sys.stderr.write("No unfinished job found\n")
            return 255
    found = [jobs[i] for i in ids if i in jobs]
    unknown = [i for i in ids if i not in jobs]
    for job_id in unknown:
        sys.stderr.write(f"Job <{job_id}> is not found\n")
    if "json" in opts:
        records: list[dict[str, str]] = []
        for job_id in ids:
            job = jobs.get(job_id)
            if job is None:
                records.append({"JOBID": job_id, "ERROR": f"Job <{job_id}> is not found"})
            else:
                records.append({f.upper(): _lsf_field(job, f) for f in fields})
        doc = {"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        if "noheader" not in opts and found:
            sys.stdout.write(delimiter.join(f.upper() for f in fields) + "\n")
        for job in found:
            sys.stdout.write(delimiter.join(_lsf_field(job, f) or "-" for f in fields) + "\n")
    return 255 if found and unknown else 0


def bkill(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    rc = 0
    with locked_state() as state:
        refresh(state)
        jobs = {k: j for k, j in visible_jobs(state).items() if j.get("flavor") == "lsf"}
        for job_id in ids:
            job = jobs.get(job_id)
            if job is None:
                sys.stderr.write(f"Job <{job_id}>: No matching job found\n")
                rc = 255
            elif job["state"] not in ACTIVE:
                sys.stderr.write(f"Job <{job_id}>: Job has already finished\n")
                rc = 255
            else:
                _cancel(job)
                sys.stdout.write(f"Job <{job_id}> is being terminated\n")
    return rc


# ---------------------------------------------------------------------------------------------
# HTCondor (formats: README.md).


def _condor_ad(job: Job) -> dict[str, Any]:
    state = job["state"]
    ad: dict[str, Any] = {
        "ClusterId": int(job["id"]),
        "ProcId": 0,
        "JobBatchName": job["name"],
        "EnteredCurrentStatus": int(
            job.get("end_time") or job.get("start_time") or job["submit_time"]
        ),
        "QDate": int(job["submit_time"]),
    }
    if job.get("start_time") is not None:
        ad["JobStartDate"] = int(job["start_time"])
    if state in (QUEUED, HELD):
        ad["JobStatus"] = 1 if state == QUEUED else 5
        if state == HELD:
            ad["HoldReason"] = "submitted on hold at user's request"
    elif state == RUNNING:
        ad["JobStatus"] = 2
    elif state in (CANCELLED, TIMEOUT):
        ad["JobStatus"] = 3
        ad["CompletionDate"] = 0
        ad["RemoveReason"] = (
            f"The job attribute PeriodicRemove expression '{job.get('periodic_remove', '')}' "
            "evaluated to TRUE"
            if state == TIMEOUT
            else f"via condor_rm (by user {job['user']})"
        )
    else:
        rc = job.get("returncode")
        ad["JobStatus"] = 4
        ad["CompletionDate"] = int(job["end_time"])
        ad["ExitBySignal"] = rc is not None and rc < 0
        if rc is not None and rc < 0:
            ad["ExitSignal"] = -rc
        else:
            ad["ExitCode"] = rc if rc is not None else 0
    return ad


def _condor_json(ads: list[dict[str, Any]], attributes: str | None) -> str:
    """condor_q/condor_history `-json`: `[`, ads separated by `,` lines, `]`; nothing at all
    when no ad matched."""
    if not ads:
        return ""
    wanted = set(attributes.split(",")) if attributes else None
    parts = []
    for ad in ads:
        shown = {k: v for k, v in sorted(ad.items()) if wanted is None or k in wanted}
        parts.append(json.dumps(shown, indent=2))
    return "[\n" + "\n,\n".join(parts) + "\n]\n"


def condor_submit(argv: list[str]) -> int:
    failed = _fail_submit("condor_submit")
    if failed is not None:
        return failed
    files = [a for a in argv if not a.startswith("-")]
    if not files:
        sys.stderr.write("ERROR: no submit description given\n")
        return 1
    try:
        lines = Path(files[0]).read_text().splitlines()
    except OSError:
        sys.stderr.write(
            f'ERROR: Can\'t open "{files[0]}"  with flags 00 (No such file or directory)\n'
        )
        return 1
    desc: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            desc[key.strip().lower()] = value.strip()
        elif line.strip() and not line.strip().startswith("#") and line.split()[0] != "queue":
            sys.stderr.write(f"ERROR: on Line {lines.index(line) + 1} of submit file: {line}\n")
            return 1
    if "executable" not in desc:
        sys.stderr.write("ERROR: Executable not specified\n")
        return 1
    cwd = desc.get("initialdir") or os.getcwd()
    limit = re.search(r">\s*(\d+)\s*\)?\s*$", desc.get("periodic_remove", ""))
    copies = int(desc.get("machine_count", "1")) if desc.get("universe") == "parallel" else 1
    job: Job = {
        "name": desc.get("batch_name", "").strip('"') or Path(desc["executable"]).name,
        "script": os.path.join(cwd, desc["executable"]),
        "cwd": cwd,
        "stdout": os.path.join(cwd, desc.get("output", os.devnull)),
        "stderr": os.path.join(cwd, desc.get("error", os.devnull)),
        "time_limit": float(limit.group(1)) if limit else None,
        "periodic_remove": desc.get("periodic_remove", ""),
        "nodes": copies,
        "copies": copies,
        "user": getpass.getuser(),
        "held": desc.get("hold", "").lower() == "true",
    }

    def prepare(job: Job, job_id: str) -> None:
        ad_file = _state_path().with_name(f"{_state_path().name}.{job_id}.ad")
        ad_file.write_text(f'ClusterId = {job_id}\nProcId = 0\nJobBatchName = "{job["name"]}"\n')
        env = {
            "_CONDOR_JOB_AD": str(ad_file),
            "_CONDOR_SCRATCH_DIR": cwd,
            "BATCH_SYSTEM": "HTCondor",
        }
        job["env"] = env

    job_id = _submit("htcondor", job, prepare)
    sys.stdout.write(f"Submitting job(s).\n1 job(s) submitted to cluster {job_id}.\n")
    return 0


def _condor_select(argv: list[str], active: bool) -> tuple[list[Job], str | None]:
    opts, ids = _opts(argv, {"-json": "json!", "-attributes": "attributes", "-match": "match"})
    with locked_state() as state:
        refresh(state)
        jobs = [j for j in state["jobs"].values() if j.get("flavor") == "htcondor"]
    clusters = {i.split(".")[0] for i in ids}
    selected = [
        j
        for j in jobs
        if (j["state"] in ACTIVE) == active and (not clusters or j["id"] in clusters)
    ]
    if not active:
        selected.sort(key=lambda j: -int(j["id"]))  # history: newest first
        if "match" in opts:
            selected = selected[: int(opts["match"])]
    return selected, opts.get("attributes")


def condor_q(argv: list[str]) -> int:
    if _garbage():
        return 0
    jobs, attributes = _condor_select(argv, active=True)
    sys.stdout.write(_condor_json([_condor_ad(j) for j in jobs], attributes))
    return 0


def condor_history(argv: list[str]) -> int:
    if _garbage():
        return 0
    jobs, attributes = _condor_select(argv, active=False)
    sys.stdout.write(_condor_json([_condor_ad(j) for j in jobs], attributes))
    return 0


def condor_rm(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    rc = 0
    with locked_state() as state:
        refresh(state)
        for job_id in ids:
            cluster = job_id.split(".")[0]
            job = state["jobs"].get(cluster)
            if job is None or job.get("flavor") != "htcondor" or job["state"] not in ACTIVE:
                sys.stderr.write(f"Couldn't find/remove all jobs in cluster {cluster}.\n")
                rc = 1
            else:
                _cancel(job)
                sys.stdout.write(f"All jobs in cluster {cluster} have been marked for removal\n")
    return rc


TOOLS: dict[str, Callable[[list[str]], int]] = {
    "sbatch": sbatch,
    "squeue": squeue,
    "scontrol": scontrol,
    "scancel": scancel,
    "srun": srun,
    "qsub": qsub,
    "qstat": qstat,
    "qdel": qdel,
    "pbsdsh": pbsdsh,
    "bsub": bsub,
    "bjobs": bjobs,
    "bkill": bkill,
    "blaunch": blaunch,
    "condor_submit": condor_submit,
    "condor_q": condor_q,
    "condor_history": condor_history,
    "condor_rm": condor_rm,
}


def main(tool: str, argv: list[str]) -> int:
    _log_call(tool, argv)
    hang = _env_float("HQPY_EMULATOR_HANG", 0)
    only = os.environ.get("HQPY_EMULATOR_HANG_TOOLS")
    if hang and (not only or tool in only.split(",")):
        time.sleep(hang)
    return TOOLS[tool](argv)


def install(bin_dir: Path) -> Path:
    """Write one executable per tool into `bin_dir` that runs this emulator with the current
    interpreter; put `bin_dir` first on `PATH` to use them."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    for tool in TOOLS:
        path = bin_dir / tool
        path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{here / tool}" "$@"\n')
        path.chmod(0o755)
    return bin_dir


def cleanup(state_path: Path) -> None:
    """Kill every process the emulated jobs left (test teardown): each job's group and
    launcher, recorded in the state file."""
    if not state_path.exists():
        return
    state = json.loads(state_path.read_text())
    for job in state.get("jobs", {}).values():
        pgid = job.get("pgid")
        # Only groups that may still run: a finished job's pgid may have been reused.
        may_run = job["state"] in (*ACTIVE, CANCELLED, TIMEOUT)
        if pgid and may_run and _group_alive(pgid):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        launcher = job.get("launcher_pid")
        if _pid_alive(launcher):
            with contextlib.suppress(OSError):
                os.kill(launcher, signal.SIGKILL)
