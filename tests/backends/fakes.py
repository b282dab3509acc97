"""A recording `CommandRunner` for backend tests: scripted answers, every call kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs

from hqpy.autoalloc.backends.base import BackendError, CommandResult


@attrs.frozen
class Call:
    argv: tuple[str, ...]
    cwd: Path | None
    timeout: float
    stdin: Path | None = None


@attrs.define
class Answer:
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""
    error: BackendError | None = None
    """Raised instead of answering (a program that cannot start, or hangs)."""


@attrs.define
class RecordingRunner:
    """Answers by program name (`argv[0]`), in order; the last answer of a program repeats."""

    answers: dict[str, list[Answer]] = attrs.field(factory=dict)
    calls: list[Call] = attrs.field(factory=list)
    exact: dict[tuple[str, ...], Answer] = attrs.field(factory=dict)
    """Answers for one whole argv, used before the per-program ones (parallel callers)."""

    def answer(self, program: str, *answers: Answer) -> RecordingRunner:
        self.answers.setdefault(program, []).extend(answers)
        return self

    def answer_argv(self, argv: Sequence[str], answer: Answer) -> RecordingRunner:
        self.exact[tuple(argv)] = answer
        return self

    async def __call__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - the CommandRunner interface
        stdin: Path | None = None,
    ) -> CommandResult:
        self.calls.append(Call(tuple(argv), cwd, timeout, stdin))
        answer = self.exact.get(tuple(argv))
        if answer is None:
            queue = self.answers.get(argv[0])
            if not queue:
                raise AssertionError(f"unexpected command {list(argv)}")
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if answer.error is not None:
            raise answer.error
        return CommandResult(tuple(argv), answer.returncode, answer.stdout, answer.stderr)

    @property
    def argvs(self) -> list[list[str]]:
        return [list(c.argv) for c in self.calls]
