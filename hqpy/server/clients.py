"""Answers to client requests: one handler per request type, in a table by request class.

Handlers that may touch many tasks (`task list`, `task info`, `task-ids`) work in chunks and
yield to the event loop every `CHUNK` tasks, so workers' heartbeats and other clients are served
meanwhile; their replies are paged (`TASK_PAGE` tasks each, the client asks for the next page),
so no reply comes near the frame limit. Handlers that wait (`job wait`, `worker wait`) drop
their waiter when cancelled: the session cancels them when the client hangs up.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from hqpy.common.errors import RequestError
from hqpy.common.idset import IdSet, format_id_set
from hqpy.common.states import JobState, TaskState, WorkerFilter, WorkerState
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import HandlerTable, RequestHandler
from hqpy.server import fit, views
from hqpy.server.commands import cancel_jobs, close_jobs, forget_jobs, stop_workers
from hqpy.server.jobs import Job
from hqpy.server.selection import (
    ID_LIMIT,
    clip,
    id_text,
    intersect,
    parse_ids,
    parse_states,
    select,
)
from hqpy.server.state import ServerState

CHUNK = 1000
"""Tasks handled between two yields to the event loop."""


class ClientHandlers:
    """The request handlers of one server, in a table by request class. Other parts of the
    server process (the allocator) add their own tables with `extend`."""

    def __init__(self, state: ServerState, info: Callable[[], m.ServerInfoView]) -> None:
        self.state = state
        self.info = info
        self._table: dict[type[object], RequestHandler] = dict(self.table())

    def table(self) -> HandlerTable:
        return {
            m.ServerInfoRequest: self.server_info,
            m.StopServerRequest: self.stop_server,
            m.SubmitRequest: self.submit,
            m.OpenJobRequest: self.open_job,
            m.CloseJobsRequest: self.close_jobs,
            m.CancelJobsRequest: self.cancel_jobs,
            m.ForgetJobsRequest: self.forget_jobs,
            m.ListJobsRequest: self.list_jobs,
            m.JobDetailsRequest: self.job_details,
            m.WaitJobsRequest: self.wait_jobs,
            m.TaskListRequest: self.task_list,
            m.TaskInfoRequest: self.task_info,
            m.TaskIdsRequest: self.task_ids,
            m.ListWorkersRequest: self.list_workers,
            m.WorkerInfoRequest: self.worker_info,
            m.StopWorkersRequest: self.stop_workers,
            m.WaitWorkersRequest: self.wait_workers,
            m.TaskExplainRequest: self.task_explain,
            m.PoolSetRequest: self.pool_set,
            m.PoolRemoveRequest: self.pool_remove,
            m.PoolListRequest: self.pool_list,
        }

    def extend(self, table: HandlerTable) -> None:
        self._table.update(table)

    async def handle(self, request: m.ClientRequest) -> m.ClientResponse:
        handler = self._table.get(type(request))
        if handler is None:
            return m.ErrorResponse(f"unsupported request {type(request).__name__}")
        try:
            response: m.ClientResponse = await handler(request)
        except RequestError as e:
            return m.ErrorResponse(str(e))
        return response

    # -----------------------------------------------------------------------------------------
    # Server and jobs

    async def server_info(self, req: m.ServerInfoRequest) -> m.ServerInfoResponse:
        return m.ServerInfoResponse(self.info())

    async def stop_server(self, req: m.StopServerRequest) -> m.OkResponse:
        # The session stops the server once this answer is sent.
        return m.OkResponse()

    async def submit(self, req: m.SubmitRequest) -> m.SubmitResponse:
        first = self.state.next_group_id
        job_id = self.state.submit(req)
        return m.SubmitResponse(job_id, self.state.check_fit(job_id, first))

    async def open_job(self, req: m.OpenJobRequest) -> m.SubmitResponse:
        return m.SubmitResponse(self.state.open_job(req.name, req.max_fails))

    async def close_jobs(self, req: m.CloseJobsRequest) -> m.LogLinesResponse:
        return m.LogLinesResponse(close_jobs(self.state, req.selector))

    async def cancel_jobs(self, req: m.CancelJobsRequest) -> m.LogLinesResponse:
        return m.LogLinesResponse(cancel_jobs(self.state, req.selector, req.reason))

    async def forget_jobs(self, req: m.ForgetJobsRequest) -> m.LogLinesResponse:
        return m.LogLinesResponse(forget_jobs(self.state, req.selector, req.states))

    async def list_jobs(self, req: m.ListJobsRequest) -> m.JobListResponse:
        wanted = None if req.states is None else {s.upper() for s in req.states}
        out = []
        for job in self.state.jobs.values():
            state = job.state()
            if wanted is None or state in wanted or (JobState.OPENED in wanted and job.is_open):
                out.append(views.job_view(job))
        return m.JobListResponse(out, total=len(self.state.jobs))

    async def job_details(self, req: m.JobDetailsRequest) -> m.JobDetailsResponse:
        jobs, missing = select(self.state.jobs, req.selector)
        missing_text = id_text(missing) if req.after is None else ""
        after_job, after_task = req.after if req.after is not None else (-1, -1)
        details = []
        room = m.TASK_PAGE
        cursor = (after_job, after_task)
        for job in jobs:
            if job.id < after_job:
                continue
            detail = views.job_detail(job, include_tasks=False)
            await trio.lowlevel.checkpoint()
            if not req.include_tasks:
                details.append(detail)
                continue
            start = after_task + 1 if job.id == after_job else 0
            tasks: list[m.TaskView] = []
            async for view in ChunkedViews(job, _from(None, start), None):
                if room == 0:
                    if tasks or job.id == after_job:
                        details.append(attrs.evolve(detail, tasks=tuple(tasks)))
                    return m.JobDetailsResponse(details, missing_text, next=cursor)
                tasks.append(view)
                cursor = (job.id, view.id)
                room -= 1
            details.append(attrs.evolve(detail, tasks=tuple(tasks)))
        return m.JobDetailsResponse(details, missing_text)

    async def wait_jobs(self, req: m.WaitJobsRequest) -> m.JobListResponse:
        jobs, missing = select(self.state.jobs, req.selector)
        ids = [j.id for j in jobs]
        for job_id in ids:
            while True:
                job = self.state.jobs.get(job_id)
                if job is None or job.is_complete(ignore_open=req.without_close):
                    break
                event = trio.Event()
                job.waiters.append(event)
                try:
                    await event.wait()
                finally:
                    # Cancelled (the client hung up): leave no waiter behind.
                    if event in job.waiters:
                        job.waiters.remove(event)
        out = [views.job_view(self.state.jobs[i]) for i in ids if i in self.state.jobs]
        return m.JobListResponse(out, total=len(out), missing=id_text(missing))

    # -----------------------------------------------------------------------------------------
    # Tasks

    async def task_list(self, req: m.TaskListRequest) -> m.TaskListResponse:
        jobs, missing = select(self.state.jobs, req.selector)
        ids = None if req.task_ids is None else parse_ids(req.task_ids)
        states = parse_states(req.states)
        after_job, after_task = req.after if req.after is not None else (-1, -1)
        out: list[tuple[int, list[m.TaskView]]] = []
        room = m.TASK_PAGE
        cursor = (after_job, after_task)
        # Later pages carry no "not found" text: the first page said it.
        missing_text = id_text(missing) if req.after is None else ""
        for job in jobs:
            if job.id < after_job:
                continue
            start = after_task + 1 if job.id == after_job else 0
            rows: list[m.TaskView] = []
            out.append((job.id, rows))
            async for view in ChunkedViews(job, _from(ids, start), states):
                if room == 0:
                    if not rows:
                        out.pop()
                    return m.TaskListResponse(out, missing_text, next=cursor)
                rows.append(view)
                cursor = (job.id, view.id)
                room -= 1
        return m.TaskListResponse(out, missing_text)

    async def task_info(self, req: m.TaskInfoRequest) -> m.TaskInfoResponse:
        job = self.state.jobs.get(req.job_id)
        if job is None:
            return m.TaskInfoResponse(None, [], "")
        ids = parse_ids(req.task_ids)
        start = 0 if req.after is None else req.after + 1
        missing = id_text(intersect(ids, job.task_ids())[1]) if req.after is None else ""
        rows: list[m.TaskView] = []
        async for view in ChunkedViews(job, _from(ids, start), None):
            if len(rows) == m.TASK_PAGE:
                detail = views.job_detail(job, False)
                return m.TaskInfoResponse(detail, rows, missing, next=rows[-1].id)
            rows.append(view)
        return m.TaskInfoResponse(views.job_detail(job, False), rows, missing)

    async def task_ids(self, req: m.TaskIdsRequest) -> m.TaskIdsResponse:
        jobs, _ = select(self.state.jobs, req.selector)
        states = parse_states(req.states)
        out = []
        for job in jobs:
            if states is None:
                out.append((job.id, str(job.task_ids())))
                continue
            ids = []
            for n, (tid, g, t) in enumerate(job.iter_tasks(), 1):
                if (t.state if t is not None else g.untouched_state) in states:
                    ids.append(tid)
                if n % CHUNK == 0:
                    await trio.lowlevel.checkpoint()
            out.append((job.id, format_id_set(ids)))
        return m.TaskIdsResponse(out)

    async def task_explain(self, req: m.TaskExplainRequest) -> m.TaskExplainResponse:
        job = self.state.jobs.get(req.job_id)
        group = None
        if job is not None:
            group = next((g for g in job.groups if req.task_id in g.ids), None)
        if job is None or group is None:
            return m.TaskExplainResponse(req.job_id, req.task_id, found=False)
        task = job.tasks.get(req.task_id)
        if task is None:
            task = group.retired(req.task_id)
        state = task.state if task is not None else group.untouched_state
        workers, queues = fit.explain(
            group.body.request, group.tags, self.state.worker_shapes(), self.state.offers()
        )
        return m.TaskExplainResponse(
            req.job_id,
            req.task_id,
            found=True,
            state=state.name.lower(),
            workers=[_explained(v) for v in workers],
            queues=[_explained(v) for v in queues],
        )

    # -----------------------------------------------------------------------------------------
    # Concurrency pools

    async def pool_set(self, req: m.PoolSetRequest) -> m.OkResponse:
        self.state.set_pool(req.name, req.size)
        return m.OkResponse()

    async def pool_remove(self, req: m.PoolRemoveRequest) -> m.OkResponse:
        self.state.remove_pool(req.name)
        return m.OkResponse()

    async def pool_list(self, req: m.PoolListRequest) -> m.PoolListResponse:
        return m.PoolListResponse(self.state.pool_views())

    # -----------------------------------------------------------------------------------------
    # Workers

    async def list_workers(self, req: m.ListWorkersRequest) -> m.WorkerListResponse:
        out = []
        for w in sorted(self.state.workers.values(), key=lambda w: w.id):
            running = w.state is WorkerState.RUNNING
            if req.filter is WorkerFilter.ALL or (req.filter is WorkerFilter.RUNNING) == running:
                out.append(views.worker_view(w))
        return m.WorkerListResponse(out)

    async def worker_info(self, req: m.WorkerInfoRequest) -> m.WorkerListResponse:
        workers, _ = select(self.state.workers, req.selector)
        return m.WorkerListResponse([views.worker_view(w) for w in workers])

    async def stop_workers(self, req: m.StopWorkersRequest) -> m.LogLinesResponse:
        return m.LogLinesResponse(stop_workers(self.state, req.selector))

    async def wait_workers(self, req: m.WaitWorkersRequest) -> m.OkResponse:
        if len(self.state.running_workers()) < req.count:
            waiter = (req.count, trio.Event())
            self.state.worker_waiters.append(waiter)
            try:
                await waiter[1].wait()
            finally:
                if waiter in self.state.worker_waiters:
                    self.state.worker_waiters.remove(waiter)
        return m.OkResponse()


def _explained(verdict: fit.Verdict) -> m.ExplainWorker:
    return m.ExplainWorker(
        verdict.who,
        verdict.runnable,
        list(verdict.checks),
    )


def _from(ids: IdSet | None, start: int) -> IdSet | None:
    """`ids` without those below `start` (None: every id)."""
    if start <= 0:
        return ids
    if ids is None:
        return IdSet.from_range(start, ID_LIMIT - 1) if start < ID_LIMIT else IdSet()
    return clip(ids, start, ID_LIMIT - 1)


class ChunkedViews:
    """The views of a job's tasks (those in `ids` and `states`), in id order, yielding to the
    event loop every `CHUNK` tasks looked at (matching or not)."""

    def __init__(self, job: Job, ids: IdSet | None, states: set[TaskState] | None) -> None:
        if ids is not None:
            ids = intersect(ids, job.task_ids())[0]
        self._tasks = job.iter_tasks(ids)
        self._states = states
        self._n = 0

    def __aiter__(self) -> ChunkedViews:
        return self

    async def __anext__(self) -> m.TaskView:
        for task_id, group, task in self._tasks:
            self._n += 1
            if self._n % CHUNK == 0:
                await trio.lowlevel.checkpoint()
            state = task.state if task is not None else group.untouched_state
            if self._states is None or state in self._states:
                return views.task_view(group, task_id, task)
        raise StopAsyncIteration
