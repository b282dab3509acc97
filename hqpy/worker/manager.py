"""Finding the batch-system allocation a worker runs in, and how much time it has left."""

from __future__ import annotations

import json
import logging
import os
import subprocess

from hqpy.common.durations import parse_duration
from hqpy.protocol.messages import ManagerInfo

log = logging.getLogger(__name__)

QUERY_TIMEOUT = 10.0


class ManagerError(Exception):
    """`--manager slurm|pbs` was asked for outside such an allocation."""


def _slurm_id(env: dict[str, str]) -> str | None:
    return env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")


def detect_manager(kind: str, env: dict[str, str] | None = None) -> ManagerInfo | None:
    """The allocation this worker runs in for `--manager detect|none|slurm|pbs`."""
    env = dict(os.environ) if env is None else env
    if kind == "none":
        return None
    if kind == "detect":
        if env.get("PBS_ENVIRONMENT") and env.get("PBS_JOBID"):
            kind = "pbs"
        elif _slurm_id(env):
            kind = "slurm"
        else:
            return _detect_other(env)
    if kind == "pbs":
        job_id = env.get("PBS_JOBID")
        if not job_id:
            raise ManagerError("PBS_JOBID is not set: this worker does not run in a PBS job")
        return ManagerInfo("PBS", job_id, pbs_time_left(job_id))
    if kind == "slurm":
        job_id = _slurm_id(env)
        if not job_id:
            raise ManagerError("SLURM_JOB_ID is not set: this worker does not run in a Slurm job")
        return ManagerInfo("SLURM", job_id, slurm_time_left(job_id))
    raise ManagerError(f"unknown manager `{kind}`; expected detect, none, slurm or pbs")


JOB_AD_LIMIT = 1 << 20
"""Bytes of an HTCondor job ad read at most."""


def _detect_other(env: dict[str, str]) -> ManagerInfo | None:
    """LSF (`LSB_JOBID`), Grid Engine (`JOB_ID` with `SGE_ROOT`), HTCondor (`_CONDOR_JOB_AD`),
    else an allocation of hqpy's own (`HQPY_ALLOCATION_ID`: local or a plug-in). The id is
    `HQPY_ALLOCATION_ID` when hqpy's script set it (what the server knows the allocation by),
    else the batch system's own; no time limit is read for these (`--time-limit` gives it)."""
    ours = env.get("HQPY_ALLOCATION_ID")
    if env.get("LSB_JOBID"):
        return ManagerInfo("LSF", ours or env["LSB_JOBID"], None)
    if env.get("JOB_ID") and env.get("SGE_ROOT"):
        return ManagerInfo("SGE", ours or env["JOB_ID"], None)
    if env.get("_CONDOR_JOB_AD"):
        cluster = ours or _condor_cluster_id(env["_CONDOR_JOB_AD"])
        return None if cluster is None else ManagerInfo("HTCONDOR", cluster, None)
    if ours:
        return ManagerInfo("LOCAL", ours, None)
    return None


def _condor_cluster_id(job_ad: str) -> str | None:
    """`ClusterId = 123` from the job ad file HTCondor gives a running job."""
    try:
        with open(job_ad, encoding="utf-8", errors="replace") as f:
            text = f.read(JOB_AD_LIMIT)
    except OSError as e:
        log.warning("Could not read the HTCondor job ad %s: %s", job_ad, e)
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ClusterId" and value.strip().isdigit():
            return value.strip()
    return None


def _run(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("Could not run `%s`: %s; the worker has no time limit", " ".join(argv), e)
        return None
    if out.returncode != 0:
        log.warning(
            "`%s` failed (exit code %d): %s; the worker has no time limit",
            " ".join(argv),
            out.returncode,
            out.stderr.strip(),
        )
        return None
    return out.stdout


def parse_scontrol_time_left(output: str) -> float | None:
    """`TimeLimit` - `RunTime` from `scontrol show job` output."""
    fields = dict(tok.split("=", 1) for tok in output.split() if "=" in tok)
    try:
        return parse_duration(fields["TimeLimit"]) - parse_duration(fields["RunTime"])
    except (KeyError, ValueError):
        return None


def parse_qstat_time_left(output: str, job_id: str) -> float | None:
    """`Resource_List.walltime` - `resources_used.walltime` from `qstat -f ID -F json`."""
    try:
        job = json.loads(output)["Jobs"][job_id]
        limit = parse_duration(job["Resource_List"]["walltime"])
        used = parse_duration(job.get("resources_used", {}).get("walltime", "00:00:00"))
        return limit - used
    except (KeyError, ValueError, TypeError):
        return None


def slurm_time_left(job_id: str) -> float | None:
    out = _run(["scontrol", "show", "job", job_id])
    return None if out is None else parse_scontrol_time_left(out)


def pbs_time_left(job_id: str) -> float | None:
    out = _run(["qstat", "-f", job_id, "-F", "json"])
    return None if out is None else parse_qstat_time_left(out, job_id)
