"""Cancelling allocations in the batch system, with retries, under the caller's time bound.

An allocation counts as cancelled only when the batch system confirmed it (`cancel_many`
answered None for it); every other answer is kept as the reason it could not be cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from hqpy.autoalloc.backends.base import BackendError, BatchBackend, CancelOutcome, CancelTarget

log = logging.getLogger(__name__)

CANCEL_ATTEMPTS = 3
"""Tries per allocation: a batch system that hiccups once (slurmctld busy) gets another go."""
CANCEL_RETRY_PAUSE = 2.0
"""Seconds between two tries."""
CANCEL_MARGIN = 5.0
"""Seconds on top of one batch command's timeout for the whole of a cancel (see
`cancel_bound`)."""


def cancel_bound(command_timeout: float) -> float:
    """The longest `hq alloc remove --force`, a withdrawal or `server stop` spends cancelling
    (all queues in parallel, retries included). The first `cancel_many` always has time to
    answer (each of its commands is bounded by `command_timeout`): were it cut short, the
    answers of the commands that did finish would be lost with it."""
    return command_timeout + CANCEL_MARGIN


def unconfirmed(targets: Sequence[CancelTarget], bound: float) -> CancelOutcome:
    """The outcome before any answer: what remains if the time bound cuts the cancels short."""
    return {t.allocation_id: f"not confirmed within {bound:g}s" for t in targets}


async def cancel_with_retries(
    backend: BatchBackend,
    targets: Sequence[CancelTarget],
    outcome: CancelOutcome,
    attempts: int = CANCEL_ATTEMPTS,
    pause: float = CANCEL_RETRY_PAUSE,
) -> None:
    """Cancel `targets` with `backend.cancel_many`, retrying the failed ones `attempts` times in
    all. `outcome` is filled as answers come, so a caller whose time bound cut this short
    still knows which cancels were confirmed."""
    pending = list(targets)
    for attempt in range(1, attempts + 1):
        try:
            answer = await backend.cancel_many(pending)
        except BackendError as e:  # `cancel_many` should not raise; a plug-in might
            answer = {t.allocation_id: str(e) for t in pending}
        for target in pending:
            outcome[target.allocation_id] = answer.get(
                target.allocation_id, "the backend did not answer for it"
            )
        pending = [t for t in pending if outcome[t.allocation_id] is not None]
        if not pending:
            return
        log.info(
            "Cancel of %s failed (try %d of %d)",
            ", ".join(t.allocation_id for t in pending),
            attempt,
            attempts,
        )
        if attempt < attempts:
            await trio.sleep(pause)
