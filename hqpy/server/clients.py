"""Answers to client requests: one function per request type, dispatched on the request's class."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hqpy.common.errors import RequestError
from hqpy.common.idset import parse_id_set
from hqpy.common.states import WorkerState
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import HandlerTable, RequestHandler
from hqpy.server.state import ServerState, parse_states

Handler = Callable[[Any, Any], Awaitable[Any]]


class ClientHandlers:
    """The request handlers of one server, in a table by request class. Other parts of the
    server process (the allocator) add their own tables with `extend`."""

    def __init__(self, state: ServerState, info: Callable[[], m.ServerInfoView]) -> None:
        self.state = state
        self.info = info
        self._table: dict[type[Any], RequestHandler] = dict(self.table())

    def table(self) -> HandlerTable:
        return {
            m.ServerInfoRequest: self.on_ServerInfoRequest,
            m.StopServerRequest: self.on_StopServerRequest,
            m.SubmitRequest: self.on_SubmitRequest,
            m.OpenJobRequest: self.on_OpenJobRequest,
            m.CloseJobsRequest: self.on_CloseJobsRequest,
            m.CancelJobsRequest: self.on_CancelJobsRequest,
            m.ForgetJobsRequest: self.on_ForgetJobsRequest,
            m.ListJobsRequest: self.on_ListJobsRequest,
            m.JobDetailsRequest: self.on_JobDetailsRequest,
            m.WaitJobsRequest: self.on_WaitJobsRequest,
            m.TaskListRequest: self.on_TaskListRequest,
            m.TaskInfoRequest: self.on_TaskInfoRequest,
            m.TaskIdsRequest: self.on_TaskIdsRequest,
            m.ListWorkersRequest: self.on_ListWorkersRequest,
            m.WorkerInfoRequest: self.on_WorkerInfoRequest,
            m.StopWorkersRequest: self.on_StopWorkersRequest,
            m.WaitWorkersRequest: self.on_WaitWorkersRequest,
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

    async def on_ServerInfoRequest(self, req: m.ServerInfoRequest) -> Any:
        return m.ServerInfoResponse(self.info())

    async def on_StopServerRequest(self, req: m.StopServerRequest) -> Any:
        # The session stops the server once this answer is sent.
        return m.OkResponse()

    async def on_SubmitRequest(self, req: m.SubmitRequest) -> Any:
        return m.SubmitResponse(self.state.submit(req))

    async def on_OpenJobRequest(self, req: m.OpenJobRequest) -> Any:
        return m.SubmitResponse(self.state.open_job(req.name, req.max_fails))

    async def on_CloseJobsRequest(self, req: m.CloseJobsRequest) -> Any:
        return m.LogLinesResponse(self.state.close_jobs(req.selector))

    async def on_CancelJobsRequest(self, req: m.CancelJobsRequest) -> Any:
        return m.LogLinesResponse(self.state.cancel_jobs(req.selector, req.reason))

    async def on_ForgetJobsRequest(self, req: m.ForgetJobsRequest) -> Any:
        return m.LogLinesResponse(self.state.forget_jobs(req.selector, req.states))

    async def on_ListJobsRequest(self, req: m.ListJobsRequest) -> Any:
        jobs = self.state.jobs.values()
        wanted = None if req.states is None else {s.upper() for s in req.states}
        views = []
        for job in jobs:
            name = job.state_name()
            if wanted is None or name in wanted or ("OPENED" in wanted and job.is_open):
                views.append(self.state.job_view(job))
        return m.JobListResponse(views, total=len(self.state.jobs))

    async def on_JobDetailsRequest(self, req: m.JobDetailsRequest) -> Any:
        jobs, missing = self.state.select_jobs(req.selector)
        return m.JobDetailsResponse(
            [self.state.job_detail(j, req.include_tasks) for j in jobs], missing
        )

    async def on_WaitJobsRequest(self, req: m.WaitJobsRequest) -> Any:
        jobs, missing = self.state.select_jobs(req.selector)
        ids = [j.id for j in jobs]
        for job_id in ids:
            while True:
                job = self.state.jobs.get(job_id)
                if job is None or job.is_complete(ignore_open=req.without_close):
                    break
                event = trio.Event()
                job.waiters.append(event)
                await event.wait()
        views = [self.state.job_view(self.state.jobs[i]) for i in ids if i in self.state.jobs]
        return m.JobListResponse(views, total=len(views), missing=missing)

    async def on_TaskListRequest(self, req: m.TaskListRequest) -> Any:
        jobs, missing = self.state.select_jobs(req.selector)
        ids = None if req.task_ids is None else self._ids(req.task_ids)
        states = parse_states(req.states)
        out = [(j.id, list(self.state.task_views(j, ids, states))) for j in jobs]
        return m.TaskListResponse(out, missing)

    async def on_TaskInfoRequest(self, req: m.TaskInfoRequest) -> Any:
        job = self.state.jobs.get(req.job_id)
        if job is None:
            return m.TaskInfoResponse(None, [], [])
        ids = self._ids(req.task_ids)
        views = list(self.state.task_views(job, ids, None))
        found = {v.id for v in views}
        return m.TaskInfoResponse(
            self.state.job_detail(job, False), views, [i for i in ids if i not in found]
        )

    async def on_TaskIdsRequest(self, req: m.TaskIdsRequest) -> Any:
        jobs, _ = self.state.select_jobs(req.selector)
        states = parse_states(req.states)
        out = []
        for job in jobs:
            if states is None:
                out.append((job.id, str(job.task_ids())))
            else:
                ids = [
                    tid
                    for tid, g, t in job.iter_tasks()
                    if (t.state if t is not None else g.untouched_state) in states
                ]
                from hqpy.common.idset import format_id_set

                out.append((job.id, format_id_set(ids)))
        return m.TaskIdsResponse(out)

    async def on_ListWorkersRequest(self, req: m.ListWorkersRequest) -> Any:
        views = []
        for w in sorted(self.state.workers.values(), key=lambda w: w.id):
            running = w.state is WorkerState.RUNNING
            if req.filter == "all" or (req.filter == "running") == running:
                views.append(self.state.worker_view(w))
        return m.WorkerListResponse(views)

    async def on_WorkerInfoRequest(self, req: m.WorkerInfoRequest) -> Any:
        workers, _ = self.state.select_workers(req.selector)
        return m.WorkerListResponse([self.state.worker_view(w) for w in workers])

    async def on_StopWorkersRequest(self, req: m.StopWorkersRequest) -> Any:
        return m.LogLinesResponse(self.state.stop_workers(req.selector))

    async def on_WaitWorkersRequest(self, req: m.WaitWorkersRequest) -> Any:
        if len(self.state.running_workers()) < req.count:
            event = trio.Event()
            self.state.worker_waiters.append((req.count, event))
            await event.wait()
        return m.OkResponse()

    @staticmethod
    def _ids(text: str) -> Any:
        try:
            return parse_id_set(text)
        except ValueError as e:
            raise RequestError(str(e)) from None
