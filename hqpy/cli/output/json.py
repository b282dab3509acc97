"""The `json` output mode: exactly one JSON document on stdout per command.

Key sets follow `hq-cli-compat.md` §9 exactly, because callers compare them; timestamps are ISO 8601
in UTC and durations float seconds.
"""

from __future__ import annotations

import json
import sys

from hqpy.cli.output.common import iso, job_state, queue_worker_args
from hqpy.common.jsontypes import JsonOut, JsonOutObject
from hqpy.common.resources import descriptor_to_json, request_to_json
from hqpy.common.states import TaskState
from hqpy.protocol import messages as m

_SUMMARY_KEYS = {
    "ABORTED": "Aborted",
    "CANCELED": "Canceled",
    "FAILED": "Failed",
    "FINISHED": "Finished",
    "RUNNING": "Running",
    "WAITING": "Waiting",
}


def _dump(value: JsonOut) -> None:
    print(json.dumps(value, indent=2), file=sys.stdout)


def server_info_json(info: m.ServerInfoView) -> JsonOutObject:
    return {
        "worker_host": info.worker_host,
        "client_host": info.client_host,
        "worker_port": info.worker_port,
        "client_port": info.client_port,
        "server_dir": None,
        "version": info.version,
        "server_uid": info.server_uid,
        "start_date": iso(info.start_date),
        "pid": info.pid,
        "journal_path": info.journal_path,
    }


def task_stats_json(stats: m.TaskStats) -> dict[str, int]:
    return {
        "aborted": stats.aborted,
        "canceled": stats.canceled,
        "failed": stats.failed,
        "finished": stats.finished,
        "running": stats.running,
        "waiting": stats.waiting,
    }


def job_json(job: m.JobView) -> JsonOutObject:
    """A `job list` entry."""
    return {
        "id": job.id,
        "name": job.name,
        "task_count": job.task_count,
        "task_stats": task_stats_json(job.task_stats),
    }


def task_json(task: m.TaskView) -> JsonOutObject:
    """A waiting task is exactly `{id, state}` (plus `instances` once it ran and was handed
    back); others also say where and when they ran."""
    if task.state is TaskState.WAITING:
        if task.instances:
            return {"id": task.id, "state": "waiting", "instances": _instances(task)}
        return {"id": task.id, "state": "waiting"}
    result: JsonOutObject = {
        "id": task.id,
        "state": task.state.label,
        "worker": task.workers[0] if task.workers else None,
        "started_at": iso(task.started_at),
        "finished_at": iso(task.ended_at),
        "cwd": task.cwd,
        "stdout": task.stdout,
        "stderr": task.stderr,
    }
    if task.state is TaskState.FAILED:
        result["error"] = task.error or ""
    if task.nodes:
        result["nodes"] = [
            {"worker": worker_id, "host": host}
            for worker_id, host in zip(task.nodes, task.workers, strict=False)
        ]
    if task.instances:
        result["instances"] = _instances(task)
    return result


def _instances(task: m.TaskView) -> list[JsonOutObject]:
    return [{"instance_id": i, "ended": why} for i, why in task.instances]


def submit_json(submit: m.SubmitView) -> JsonOutObject:
    return {
        "array": {
            "resources": [request_to_json(submit.request)],
            "priority": submit.priority,
            "program": {
                "args": list(submit.args),
                "env": dict(submit.env),
                "cwd": submit.cwd,
                "stdout": submit.stdout,
                "stderr": submit.stderr,
            },
            "pin_mode": None,
            "crash_limit": submit.crash_limit,
            "task_dir": submit.task_dir,
            "time_limit": submit.time_limit,
        },
        # hqpy's own, beside HyperQueue's `array` (whose keys stay as they are).
        "tags": list(submit.tags),
        "pool": submit.pool,
    }


def job_detail_json(job: m.JobDetailView) -> JsonOutObject:
    info = job.info
    return {
        "info": {
            "id": info.id,
            "name": info.name,
            "task_count": info.task_count,
            "task_stats": task_stats_json(info.task_stats),
            "is_open": info.is_open,
            "cancel_reason": info.cancel_reason,
        },
        "submits": [submit_json(s) for s in job.submits],
        "finished_at": iso(job.finished_at),
        "max_fails": job.max_fails,
        # HyperQueue's `started_at` is when the job was created, i.e. submitted.
        "started_at": iso(job.submitted_at),
        "tasks": [task_json(t) for t in job.tasks] if job.tasks is not None else [],
    }


def worker_json(worker: m.WorkerView) -> JsonOutObject:
    config = worker.configuration
    manager = config.manager
    return {
        "id": worker.id,
        "configuration": {
            "heartbeat_interval": float(config.heartbeat_interval),
            "hostname": config.hostname,
            "idle_timeout": None if config.idle_timeout is None else float(config.idle_timeout),
            "listen_address": config.listen_address,
            "resources": {
                "resources": [descriptor_to_json(r) for r in config.resources],
                "coupling": {"weights": []},
            },
            "time_limit": None if config.time_limit is None else float(config.time_limit),
            "work_dir": config.work_dir,
            "group": config.group,
            "on_server_lost": config.on_server_lost,
            "min_utilization": float(config.min_utilization),
            "filter_tags": list(config.filter_tags),
        },
        "allocation": (
            None if manager is None else {"manager": manager.manager, "id": manager.allocation_id}
        ),
        "started": iso(worker.started_at),
        "ended": iso(worker.ended_at),
        "runtime_info": {
            "SingleNodeTasks": {
                "assigned_tasks": worker.assigned_tasks,
                "is_reserved": False,
                "running_tasks": worker.running_tasks,
            }
        },
        "last_task_started": iso(worker.last_task_started),
    }


class JsonOutput:
    """Machine-readable output; errors go to stdout too, as `{"error": ...}`."""

    def server_started(self, info: m.ServerInfoView) -> None:
        _dump(server_info_json(info))
        sys.stdout.flush()

    def server_info(self, info: m.ServerInfoView) -> None:
        _dump(server_info_json(info))

    def job_submitted(self, job_id: int) -> None:
        _dump({"id": job_id})

    def job_opened(self, job_id: int) -> None:
        _dump({"id": job_id})

    def job_list(self, jobs: list[m.JobView], total: int, verbose: bool) -> None:
        _dump([job_json(j) for j in jobs])

    def job_details(self, jobs: list[m.JobDetailView]) -> None:
        _dump([job_detail_json(j) for j in jobs])

    def job_summary(self, jobs: list[m.JobView]) -> None:
        counts = dict.fromkeys(sorted(_SUMMARY_KEYS.values()), 0)
        for job in jobs:
            key = _SUMMARY_KEYS.get(job_state(job))
            if key is not None:
                counts[key] += 1
        _dump(counts)

    def job_wait_result(self, jobs: list[m.JobView], duration: float) -> None:
        _dump([job_json(j) for j in jobs])

    def task_list(self, jobs: list[tuple[int, list[m.TaskView]]], verbose: bool) -> None:
        # What `_dump` prints for `{"<job>": [{"id": .., "state": ..}, ..]}`, written without
        # json's pure-Python indenting encoder (seconds for 100,000 tasks), one job at a time.
        write, text = sys.stdout.write, json.encoder.encode_basestring_ascii
        if not jobs:
            write("{}\n")
            return
        write("{")
        by_job = dict(sorted(jobs, key=lambda j: j[0]))  # as the dict `_dump` would get
        for n, (job_id, tasks) in enumerate(by_job.items()):
            write(",\n  " if n else "\n  ")
            rows = [
                f'    {{\n      "id": {int.__repr__(t.id)},\n      "state": {text(label)}\n    }}'
                for t in sorted(tasks, key=_task_id)
                for label in (t.state.label,)
            ]
            write(
                f"{text(str(job_id))}: [\n" + ",\n".join(rows) + "\n  ]"
                if rows
                else f"{text(str(job_id))}: []"
            )
        write("\n}\n")

    def task_info(self, job: m.JobDetailView, tasks: list[m.TaskView], verbose: bool) -> None:
        submits = job.submits
        out = []
        for t in tasks:
            row = task_json(t)
            if 0 <= t.group < len(submits):
                row["tags"] = list(submits[t.group].tags)
                row["pool"] = submits[t.group].pool
            out.append(row)
        _dump(out)

    def task_ids(self, jobs: list[tuple[int, str]]) -> None:
        _dump({str(job_id): ids for job_id, ids in jobs})

    def worker_list(self, workers: list[m.WorkerView]) -> None:
        _dump([{**worker_json(w), "state": w.state} for w in sorted(workers, key=lambda w: w.id)])

    def worker_info(self, workers: list[m.WorkerView]) -> None:
        _dump([worker_json(w) for w in workers])

    def worker_address(self, hostname: str) -> None:
        _dump(hostname)

    def queue_list(self, queues: list[m.QueueView]) -> None:
        _dump([queue_json(q) for q in queues])

    def allocation_list(self, queue: m.QueueView, allocations: list[m.AllocationView]) -> None:
        # HyperQueue's shape (a list of allocations); each also carries its queue's parts and
        # the environment, pool settings and filter tags its queue gave it (each only when set).
        parts = parts_json(queue.params)
        extra = {"parts": parts} if parts else {}
        env = _worker_environment(queue.params)
        pool = _pool(queue)
        _dump([{**allocation_json(a), **extra, **env, **pool} for a in allocations])

    def alloc_events(self, events: list[m.AllocEventView], follow: bool) -> None:
        if follow:
            # One object per line, so a reader can act on each as it comes.
            for e in events:
                print(json.dumps(event_json(e)), flush=True)
        else:
            _dump([event_json(e) for e in events])

    def task_explain(self, resp: m.TaskExplainResponse) -> None:
        def worker(w: m.ExplainWorker) -> JsonOutObject:
            checks: list[JsonOutObject] = [
                {
                    "kind": v.kind,
                    "name": v.name,
                    "provides": v.provides,
                    "request": v.request,
                    "ok": v.ok,
                }
                for v in w.variants
            ]
            return {
                "worker_id": int(w.worker) if w.worker.isdigit() else w.worker,
                "runnable": w.runnable,
                "variants": [{"variant": 0, "runnable": w.runnable, "checks": checks}],
            }

        _dump(
            {
                "job_id": resp.job_id,
                "task_id": resp.task_id,
                "state": resp.state,
                "explanation": {
                    "n_task_deps": 0,
                    "workers": [worker(w) for w in resp.workers],
                    "queues": [worker(q) for q in resp.queues],
                },
            }
        )

    def pool_list(self, pools: list[m.PoolView]) -> None:
        _dump(
            [
                {"name": p.name, "size": p.size, "running": p.running, "waiting": p.waiting}
                for p in pools
            ]
        )

    def empty(self) -> None:
        _dump({})

    def error(self, message: str) -> None:
        _dump({"error": message})


def _task_id(task: m.TaskView) -> int:
    return task.id


def queue_json(queue: m.QueueView) -> JsonOutObject:
    p = queue.params
    return {
        "id": queue.id,
        "name": p.name,
        "state": queue.state,
        "manager": p.manager.upper(),
        "additional_args": list(p.additional_args),
        "backlog": p.backlog,
        "max_workers_per_alloc": p.workers_per_alloc,
        "timelimit": p.time_limit,
        "max_worker_count": p.max_worker_count,
        "worker_args": queue_worker_args(p),
        "known_worker_resources": None
        if queue.known_resources is None
        else [descriptor_to_json(r) for r in queue.known_resources],
        **_worker_environment(p),
        **({"splits": list(p.splits)} if p.splits else {}),
        **({"parallel_environment": p.parallel_environment} if p.parallel_environment else {}),
        **_pool(queue),
    }


def _pool(queue: m.QueueView) -> JsonOutObject:
    """A pool's settings and the queue's filter tags, only when set (issue 10)."""
    p = queue.params
    out: dict[str, JsonOut] = {}
    if p.preallocate > 0:
        out["preallocate"] = {
            "jobs": p.preallocate,
            "persist": p.persist,
            "memory": p.memory,
            "started": queue.prealloc_started,
            "stopped": queue.prealloc_stopped,
        }
    if p.filter_tags:
        out["filter_tags"] = list(p.filter_tags)
    return out


def _worker_environment(p: m.QueueParams) -> JsonOutObject:
    """The per-queue worker environment (`--env-script`, ...), only when one is set (w2alloc)."""
    env = {
        "env_script": p.env_script,
        "worker_env": list(p.worker_env),
        "python": p.python,
        "worker_dir": p.worker_dir,
        "script_template": p.script_template is not None,
        "template_params": list(p.template_params),
    }
    return {"worker_environment": env} if any(env.values()) else {}


def parts_json(p: m.QueueParams) -> list[JsonOutObject]:
    """The `--split` parts of each allocation of a queue (empty without a split)."""
    from hqpy.autoalloc.partitions import parse_split

    out: list[JsonOutObject] = []
    first = 0
    for text in p.splits:
        split = parse_split(text)
        out.append(
            {
                "kind": split.kind,
                "nodes": split.count,
                "first_node": first,
                "filter_tags": list(split.tags),
            }
        )
        first += split.count
    return out


def allocation_json(a: m.AllocationView) -> JsonOutObject:
    return {
        "id": a.id,
        "target_worker_count": a.worker_count,
        "queued_at": iso(a.queued_at),
        "started_at": iso(a.started_at),
        "ended_at": iso(a.ended_at),
        "status": a.state.lower(),
        "workdir": a.workdir,
        "pending_reason": a.pending_reason,
    }


def event_json(e: m.AllocEventView) -> JsonOutObject:
    return {
        "time": iso(e.time),
        "event": e.event,
        "queue_id": e.queue_id,
        "allocation_id": e.allocation_id,
        "message": e.message,
    }
