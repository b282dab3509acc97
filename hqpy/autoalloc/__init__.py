"""Automatic allocation: queues that submit allocations to a batch system on demand.

An *allocation* is one batch-system job (a Slurm or PBS job, or a local process group) that
runs `hq worker start`; it is never called a "job" here, since a job is what `hq submit` makes.
A *queue* is the recipe for allocations: backend, time limit, backlog, workers per allocation.

- `state`: queues, allocations, their state machines and the rate limiter (pure);
- `planner`: how many allocations of how many workers to submit now (pure);
- `service`: the trio loop that wakes on events and talks to the backends;
- `backends/`: one adapter per batch system behind `BatchBackend`.
"""
