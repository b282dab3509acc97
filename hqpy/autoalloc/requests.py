"""Answers to the `hq alloc ...` requests; the server's client sessions dispatch to them."""

from __future__ import annotations

from hqpy.autoalloc.service import AutoAllocService
from hqpy.autoalloc.views import queue_view
from hqpy.protocol import messages as m
from hqpy.protocol.readmodels import HandlerTable


class AllocRequests:
    def __init__(self, service: AutoAllocService) -> None:
        self.service = service

    def table(self) -> HandlerTable:
        return {
            m.AllocAddRequest: self.add,
            m.AllocDryRunRequest: self.dry_run,
            m.AllocListRequest: self.list_queues,
            m.AllocInfoRequest: self.info,
            m.AllocEventsRequest: self.events,
            m.AllocQueueRequest: self.queue_action,
            m.AllocLogRequest: self.log,
            m.AllocDrainRequest: self.drain,
            m.AllocPreallocateRequest: self.preallocate,
            m.AllocStopPreallocatedRequest: self.stop_preallocated,
            m.AllocLoadRequest: self.load,
        }

    async def add(self, req: m.AllocAddRequest) -> m.QueueCreatedResponse:
        queue = await self.service.add_queue(req.params, req.dry_run)
        return m.QueueCreatedResponse(queue.id)

    async def dry_run(self, req: m.AllocDryRunRequest) -> m.OkResponse | m.AllocLogResponse:
        workdir = await self.service.dry_run(req.params, req.print_script)
        if workdir is not None:
            return m.AllocLogResponse(str(workdir))
        return m.OkResponse()

    async def list_queues(self, req: m.AllocListRequest) -> m.QueueListResponse:
        return m.QueueListResponse(self.service.queue_views())

    async def info(self, req: m.AllocInfoRequest) -> m.AllocationListResponse:
        queue = self.service.get_queue(req.queue_id)
        views = self.service.allocation_views(queue.id)
        return m.AllocationListResponse(queue_view(queue, self.service.default_worker_cpus), views)

    async def events(self, req: m.AllocEventsRequest) -> m.AllocEventsResponse | m.ErrorResponse:
        service = self.service
        queue = service.state.queues.get(req.queue_id)
        if queue is None:
            return m.ErrorResponse(f"Allocation queue {req.queue_id} not found")
        if req.wait and not queue.removed:
            await service.wait_for_events(req.queue_id, req.after)
        queue = service.state.queues[req.queue_id]
        return m.AllocEventsResponse(
            service.event_views(req.queue_id, req.after), queue.event_count, queue.removed
        )

    async def queue_action(self, req: m.AllocQueueRequest) -> m.OkResponse:
        service = self.service
        if req.action is m.QueueAction.PAUSE:
            service.pause(req.queue_id)
        elif req.action is m.QueueAction.RESUME:
            service.resume(req.queue_id)
        else:
            await service.remove(req.queue_id, req.force)
        return m.OkResponse()

    async def drain(self, req: m.AllocDrainRequest) -> m.OkResponse:
        self.service.drain(req.allocation_id, req.grace)
        return m.OkResponse()

    async def log(self, req: m.AllocLogRequest) -> m.AllocLogResponse | m.ErrorResponse:
        found = self.service.state.find_allocation(req.allocation_id)
        if found is None:
            return m.ErrorResponse(f"Allocation {req.allocation_id} not found")
        return m.AllocLogResponse(str(found[1].workdir))

    async def preallocate(self, req: m.AllocPreallocateRequest) -> m.AllocQueuesResponse:
        return m.AllocQueuesResponse(tuple(self.service.preallocate(req.queues)))

    async def stop_preallocated(self, req: m.AllocStopPreallocatedRequest) -> m.AllocQueuesResponse:
        return m.AllocQueuesResponse(
            tuple(await self.service.stop_preallocated(req.queues, req.now))
        )

    async def load(self, req: m.AllocLoadRequest) -> m.AllocQueuesResponse:
        return m.AllocQueuesResponse(tuple(await self.service.load_queues(req.queues)))
