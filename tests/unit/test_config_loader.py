"""The TOML configuration loader: every key, and every error path (file, key path, what)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hqpy.config.loader import POOL_KEYS, QUEUE_KEYS, ConfigError, load_file, load_text
from hqpy.protocol.messages import QueueParams

MANAGERS = ("slurm", "pbs", "local")


def load(text: str, base: Path = Path("/cfg")) -> tuple[tuple[QueueParams, ...], dict[str, int]]:
    config = load_text(text, "hqpy.toml", base, MANAGERS)
    return config.queues, dict(config.pools)


def error(text: str, base: Path = Path("/cfg")) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(text, "hqpy.toml", base, MANAGERS)
    return str(info.value)


def test_a_queue_with_every_simple_key(tmp_path: Path) -> None:
    (tmp_path / "t.sh").write_text("#!/bin/bash\n$worker_command\n")
    queues, pools = load(
        """
[queue.cpu]
manager = "slurm"
time_limit = "1h 30m"
backlog = 2
workers_per_alloc = 3
max_worker_count = 9
idle_timeout = "90s"
worker_time_limit = "1h"
worker_start_cmd = "echo start"
worker_stop_cmd = "echo stop"
worker_wrap_cmd = "srun"
on_server_lost = "stop"
cpus = 8
resource = ["gpus=2", "mem=sum(1000)"]
group = "g"
coupling = "cpus,gpus"
no_hyper_threading = true
detect_resources = "cpus"
overview_interval = "30s"
min_utilization = 0.5
env_script = "env.sh"
worker_env = { OMP_NUM_THREADS = "4" }
python = "python3"
worker_dir = "/scratch"
script_template = "t.sh"
template_params = ["account=abc"]
args = ["--partition=short"]
filter_tag = ["cpu", "site=x"]
preallocate = 2
persist = true
memory = "16g"
""",
        tmp_path,
    )
    assert pools == {}
    (q,) = queues
    assert q == QueueParams(
        manager="slurm",
        time_limit=5400.0,
        backlog=2,
        workers_per_alloc=3,
        max_worker_count=9,
        name="cpu",
        idle_timeout=90.0,
        worker_time_limit=3600.0,
        worker_start_cmd="echo start",
        worker_stop_cmd="echo stop",
        worker_wrap_cmd="srun",
        on_server_lost="stop",
        cpus="8",
        resources=("gpus=2", "mem=sum(1000)"),
        additional_args=("--partition=short",),
        group="g",
        coupling="cpus,gpus",
        no_hyper_threading=True,
        detect_resources="cpus",
        overview_interval=30.0,
        min_utilization=0.5,
        env_script=str(tmp_path / "env.sh"),
        worker_env=("OMP_NUM_THREADS=4",),
        python="python3",
        worker_dir="/scratch",
        script_template="#!/bin/bash\n$worker_command\n",
        template_params=("account=abc",),
        filter_tags=("cpu", "site=x"),
        preallocate=2,
        persist=True,
        memory=16 * 2**30,
    )


def test_every_alloc_add_option_has_a_key() -> None:
    fields = {f for f, _ in QUEUE_KEYS.values()}
    assert fields == set(QueueParams.__annotations__)


def test_a_bpipe_pool_and_concurrency_pools() -> None:
    queues, pools = load(
        """
[preallocate.small]
manager = "pbs"
jobs = 4
walltime = "8:00:00"
memory = "16GB"
persist = true

[preallocate.big]
manager = "slurm"
walltime = "90m"
configs = ["berry", "juice"]

[pools]
licence = 1
fluent = 4
"""
    )
    small, big = queues
    assert (small.name, small.preallocate, small.time_limit, small.persist) == (
        "small",
        4,
        8 * 3600.0,
        True,
    )
    assert small.memory == 16 * 2**30  # binary
    assert small.filter_tags == ("small",)  # no configs: the name is the tag
    assert (big.preallocate, big.time_limit, big.filter_tags) == (1, 5400.0, ("berry", "juice"))
    assert pools == {"licence": 1, "fluent": 4}


def test_pool_keys_are_the_queue_keys_with_bpipes_names() -> None:
    assert set(POOL_KEYS) == (set(QUEUE_KEYS) - {"preallocate"}) | {"jobs", "walltime", "configs"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[preallocate.small]\nmanager = "slurm"\nwalltime = "8 hours and a bit"',
            'hqpy.toml: preallocate.small.walltime: "8 hours and a bit" is not a duration',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limt = "1h"',
            "hqpy.toml: queue.a.time_limt: unknown key; did you mean `time_limit`?",
        ),
        (
            '[preallocate.a]\nmanager = "slurm"\nwalltime = "1h"\njob = 2',
            "hqpy.toml: preallocate.a.job: unknown key; did you mean `jobs`?",
        ),
        ("[queues.a]", "hqpy.toml: queues: unknown key; did you mean `queue`?"),
        ('[queue.a]\ntime_limit = "1h"', "hqpy.toml: queue.a: `manager` is missing"),
        ('[queue.a]\nmanager = "slurm"', "hqpy.toml: queue.a: `time_limit` is missing"),
        ('[preallocate.a]\nmanager = "slurm"', "hqpy.toml: preallocate.a: `walltime` is missing"),
        (
            '[queue.a]\nmanager = "sge2"\ntime_limit = "1h"',
            'hqpy.toml: queue.a.manager: "sge2" is not one of slurm, pbs, local',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nbacklog = 0',
            "hqpy.toml: queue.a.backlog: 0 is less than 1",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nbacklog = "2"',
            'hqpy.toml: queue.a.backlog: "2" is not a whole number',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nmemory = "lots"',
            'hqpy.toml: queue.a.memory: "lots" is not a size',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nmemory = 10',
            "hqpy.toml: queue.a.memory: 10 is less than 1 MiB",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "0s"',
            'hqpy.toml: queue.a.time_limit: "0s" is not a positive duration',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = true',
            "hqpy.toml: queue.a.time_limit: true is not a duration",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\npersist = "yes"',
            'hqpy.toml: queue.a.persist: "yes" is not true or false',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\npersist = true',
            "hqpy.toml: queue.a.persist: needs `preallocate`",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nworker_time_limit = "2h"',
            "hqpy.toml: queue.a.worker_time_limit: is longer than `time_limit`",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\ncpus = "x"',
            "hqpy.toml: queue.a.cpus: ",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nresource = ["gpus"]',
            "hqpy.toml: queue.a.resource: invalid resource 'gpus'",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nfilter_tag = ["a b"]',
            "hqpy.toml: queue.a.filter_tag: invalid tag 'a b'",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nargs = [1]',
            "hqpy.toml: queue.a.args: [1] is not a list of strings",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nworker_env = ["X"]',
            'hqpy.toml: queue.a.worker_env: "X" is not KEY=VALUE',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\non_server_lost = "x"',
            'hqpy.toml: queue.a.on_server_lost: "x" is not one of stop, finish-running',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nmin_utilization = 2',
            "hqpy.toml: queue.a.min_utilization: 2 is not a number between 0 and 1",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nname = ""',
            'hqpy.toml: queue.a.name: "" is not a non-empty string',
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nscript_template = "nope.sh"',
            "hqpy.toml: queue.a.script_template: cannot read /cfg/nope.sh",
        ),
        (
            '[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\n'
            '[preallocate.b]\nmanager = "slurm"\nwalltime = "1h"\nname = "a"',
            'hqpy.toml: preallocate.b.name: "a" is also the name of queue.a',
        ),
        ("queue = 3", "hqpy.toml: queue: is 3, not a table of [queue.NAME] tables"),
        ("[queue]\na = 3", "hqpy.toml: queue.a: is 3, not a table"),
        ("pools = 3", "hqpy.toml: pools: is 3, not a table of NAME = SIZE"),
        ("[pools]\nx = 0", "hqpy.toml: pools.x: 0 is not a pool size"),
        ("[pools]\nx = true", "hqpy.toml: pools.x: true is not a pool size"),
        ("[pools\nx = 1", "hqpy.toml: not valid TOML: "),
    ],
)
def test_errors_name_the_file_the_key_path_and_what_is_wrong(text: str, message: str) -> None:
    assert error(text).startswith(message)


def test_unknown_key_without_a_close_name_lists_the_valid_ones() -> None:
    message = error('[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nzzzzzz = 1')
    assert message.startswith("hqpy.toml: queue.a.zzzzzz: unknown key; valid keys: args, backlog")


def test_the_first_bad_queue_stops_the_whole_file() -> None:
    # A bad file changes nothing: the loader returns nothing, not the good queues before it.
    message = error(
        '[queue.good]\nmanager = "slurm"\ntime_limit = "1h"\n'
        '[queue.bad]\nmanager = "slurm"\ntime_limit = "x"'
    )
    assert message.startswith('hqpy.toml: queue.bad.time_limit: "x" is not a duration')


def test_load_file_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.toml"
    with pytest.raises(ConfigError, match=f"^{path}: cannot read the configuration: "):
        load_file(path)


def test_load_file_resolves_paths_from_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "hqpy.toml"
    path.write_text('[queue.a]\nmanager = "local"\ntime_limit = "1h"\nenv_script = "e.sh"\n')
    (q,) = load_file(path, MANAGERS).queues
    assert q.env_script == str(tmp_path / "e.sh")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [('"8:00:00"', 28800.0), ('"90m"', 5400.0), ('"8 hours"', 28800.0), ("120", 120.0)],
)
def test_durations(value: str, seconds: float) -> None:
    (q,) = load(f'[queue.a]\nmanager = "slurm"\ntime_limit = {value}')[0]
    assert q.time_limit == seconds


@pytest.mark.parametrize(
    ("value", "size"),
    [('"16g"', 16 * 2**30), ('"512MiB"', 512 * 2**20), ('"1.5 GB"', 3 * 2**29), ("1048576", 2**20)],
)
def test_sizes_are_binary(value: str, size: int) -> None:
    (q,) = load(f'[queue.a]\nmanager = "slurm"\ntime_limit = "1h"\nmemory = {value}')[0]
    assert q.memory == size


def test_the_demo_configuration_loads() -> None:
    """`scripts/demo.sh` (the README's main command) starts its server from this file."""
    from hqpy.autoalloc.backends import registry

    path = Path(__file__).parents[2] / "scripts" / "demo.toml"
    config = load_file(path, registry.names())
    [queue] = config.queues
    assert (queue.name, queue.manager, queue.workers_per_alloc) == ("local", "local", 2)
    assert config.pools == (("licence", 1),)


@pytest.mark.parametrize(
    ("split", "message"),
    [
        (
            '["mpi:2", "serial:1"]',
            "hq.toml: queue.mpi.split: the split node counts add up to 3, "
            "but --workers-per-alloc is 4; they must be equal",
        ),
        ('["bogus"]', "hq.toml: queue.mpi.split: "),
    ],
)
def test_split_is_checked_as_alloc_add_checks_it(split: str, message: str) -> None:
    from hqpy.autoalloc.params import split_error

    text = f"""
[queue.mpi]
manager = "slurm"
time_limit = "1h"
workers_per_alloc = 4
split = {split}
"""
    with pytest.raises(ConfigError) as e:
        load_text(text, "hq.toml", Path("/cfg"), split_error=split_error)
    assert str(e.value).startswith(message)
    assert "Invalid --split" not in str(e.value)
    good = text.replace(split, '["mpi:1", "serial:3"]')
    [params] = load_text(good, "hq.toml", Path("/cfg"), split_error=split_error).queues
    assert params.splits == ("mpi:1", "serial:3")
