"""The page parser and the output matcher of the doc runner."""

from __future__ import annotations

from tests.docs.shell_doc import Command, Normaliser, Script, compare, matches, parse_page

PAGE = """Intro

```bash
#!/bin/bash
# job.sh
echo hi
```

<!-- doc: loose-digits -->
```console
$ chmod +x job.sh
$ hq submit --array 1-3 \\
    -- ./job.sh
Job submitted successfully, job ID: 1
$ hq server start
+-----+
```

```console
$ true
```
"""


def test_parse_page_finds_scripts_commands_and_directives() -> None:
    steps = parse_page(PAGE)
    assert steps[0] == Script("job.sh", "#!/bin/bash\n# job.sh\necho hi\n")
    chmod, submit, start, true = steps[1:]
    assert isinstance(submit, Command) and isinstance(true, Command)
    assert submit.command == "hq submit --array 1-3 \\\n    -- ./job.sh"
    assert submit.shown == ("Job submitted successfully, job ID: 1",)
    assert submit.directives == frozenset({"loose-digits"})
    assert true.directives == frozenset()
    assert isinstance(start, Command) and start.background and not submit.background


def test_ellipsis_matches_any_lines() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "d"], ["a", "d"])
    assert not matches(["a", "...", "d"], ["a", "b"])
    assert matches(["..."], [])
    assert not matches(["a"], ["a", "b"])


def test_normaliser_folds_what_differs_between_runs() -> None:
    n = Normaliser((("/tmp/pytest-1/hqdoc", "/tmp/hqdoc"), ("node7", "vm")))
    line = "2026-11-26T14:00:01Z INFO Worker 1 registered with server aB3dE9"
    assert n(line) == "<time> INFO Worker 1 registered with server <uid>"
    assert n("| 1  | FINISHED | node7  | 1s 994ms |") == n("| 1 | FINISHED | vm | 2s 6ms |")
    assert n("| Server directory | /tmp/pytest-1/hqdoc/hq-server/001 |") == (
        "| Server directory | /tmp/hqdoc/hq-server/001 |"
    )
    assert n("task 1: cpus 0", frozenset({"loose-digits"})) == "task N: cpus N"


def test_compare_reports_a_difference() -> None:
    cmd = Command(1, "hq job list", ("| 1 | a | RUNNING | 20 |",))
    ok, _, _ = compare(cmd, "| 1 | a | WAITING | 20 |\n", Normaliser())
    assert not ok
