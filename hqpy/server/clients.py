"""Answers to client requests: one function per request type, dispatched on the request's class."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hqpy.common.idset import parse_id_set
from hqpy.protocol import messages as m
from hqpy.server.state import RequestError, ServerState, parse_states

Handler = Callable[[Any, Any], Awaitable[Any]]


class ClientHandlers:
    """The request handlers of one server; `server` gives access to info and shutdown."""

    def __init__(
        self, state: ServerState, info: Callable[[], m.ServerInfoView], autoalloc: Any = None
    ) -> None:
        self.state = state
        self.info = info
        self.autoalloc = autoalloc
        """The `AutoAllocService`, once the server has started it."""

    async def handle(self, request: Any) -> Any:
        handler = getattr(self, "on_" + type(request).__name__, None)
        if handler is None:
            return m.ErrorResponse(f"unsupported request {type(request).__name__}")
        from hqpy.autoalloc.service import AllocError

        try:
            return await handler(request)
        except (RequestError, AllocError) as e:
            return m.ErrorResponse(str(e))

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
            running = w.state == "RUNNING"
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

    # -----------------------------------------------------------------------------------------
    # Automatic allocation

    def _queue_view(self, queue: Any) -> m.QueueView:
        return m.QueueView(
            id=queue.id,
            params=queue.params,
            state=queue.state.value,
            known_resources=queue.known_resources,
            pause_reason=queue.pause_reason,
        )

    async def on_AllocAddRequest(self, req: m.AllocAddRequest) -> Any:
        queue = await self.autoalloc.add_queue(req.params, req.dry_run)
        return m.QueueCreatedResponse(queue.id)

    async def on_AllocDryRunRequest(self, req: m.AllocDryRunRequest) -> Any:
        await self.autoalloc.dry_run(req.params)
        return m.OkResponse()

    async def on_AllocListRequest(self, req: m.AllocListRequest) -> Any:
        queues = self.autoalloc.state.live_queues()
        return m.QueueListResponse([self._queue_view(q) for q in queues])

    async def on_AllocInfoRequest(self, req: m.AllocInfoRequest) -> Any:
        queue = self.autoalloc.get_queue(req.queue_id)
        allocations = [
            m.AllocationView(
                id=a.id,
                state=a.state.value,
                workdir=str(a.workdir),
                worker_count=a.worker_count,
                queued_at=a.queued_at,
                started_at=a.started_at,
                ended_at=a.finished_at,
            )
            for a in queue.allocations.values()
        ]
        return m.AllocationListResponse(self._queue_view(queue), allocations)

    async def on_AllocEventsRequest(self, req: m.AllocEventsRequest) -> Any:
        service = self.autoalloc
        queue = service.state.queues.get(req.queue_id)
        if queue is None:
            return m.ErrorResponse(f"Allocation queue {req.queue_id} not found")
        if req.wait and not queue.removed:
            await service.wait_for_events(req.queue_id, req.after)
        queue = service.state.queues[req.queue_id]
        kept = len(queue.events)
        first_kept = queue.event_count - kept
        skip = max(0, req.after - first_kept)
        events = [
            m.AllocEventView(e.time, e.event, e.queue_id, e.allocation_id, e.message)
            for e in list(queue.events)[skip:]
        ]
        return m.AllocEventsResponse(events, queue.event_count, queue.removed)

    async def on_AllocQueueRequest(self, req: m.AllocQueueRequest) -> Any:
        service = self.autoalloc
        if req.action == "pause":
            service.pause(req.queue_id)
        elif req.action == "resume":
            service.resume(req.queue_id)
        elif req.action == "remove":
            await service.remove(req.queue_id, req.force)
        else:
            return m.ErrorResponse(f"unknown queue action `{req.action}`")
        return m.OkResponse()

    async def on_AllocLogRequest(self, req: m.AllocLogRequest) -> Any:
        found = self.autoalloc.state.find_allocation(req.allocation_id)
        if found is None:
            return m.ErrorResponse(f"Allocation {req.allocation_id} not found")
        return m.AllocLogResponse(str(found[1].workdir))
