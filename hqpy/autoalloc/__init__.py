"""Automatic allocation: queues that submit allocations to a batch system on demand.

An *allocation* is one batch-system job (a Slurm or PBS job, or a local process group) that
runs `hq worker start`; it is never called a "job" here, since a job is what `hq submit` makes.
A *queue* is the recipe for allocations: backend, time limit, backlog, workers per allocation.

- `state`: queues, allocations, their state machines and the rate limiter (pure);
- `planner`: how many allocations of how many workers to submit now, and how many queued
  ones the demand still needs (pure);
- `process`: the trio loop that wakes on events, decides in passes and runs each queue's batch
  commands as that queue's own steps (HyperQueue's `process`);
- `service`: the handle the server uses: worker events, client requests, read views
  (HyperQueue's `service`); `requests` answers `hq alloc ...` through it;
- `params`, `views`, `cancels`: queue checks, protocol views, cancels with
  retries, optional abilities of backends;
- `backends/`: one adapter per batch system behind `BatchBackend`.
"""
