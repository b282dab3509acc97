"""Scrape latency of `/metrics` (and `/api/status`) on a server holding a 1,000,000-task array.

Starts a real `hq server start --metrics-port`, submits `--array 1-1000000`, then times GETs of
`/metrics` on one kept-alive connection (as Prometheus scrapes). With `--worker` a worker runs
tasks meanwhile, so the scrape competes with the scheduler and task updates.

    .venv/bin/python scripts/bench_metrics.py [--tasks 1000000] [--scrapes 200] [--worker]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HQ = [sys.executable, "-m", "hqpy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hq(server_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [*HQ, "--server-dir", str(server_dir), *args],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return out.stdout


def timings(port: int, path: str, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        out.append((time.perf_counter() - start) * 1000)
        assert response.status == 200 and body
    conn.close()
    return out


def summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "min_ms": round(ms[0], 2),
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--worker", action="store_true", help="run tasks while scraping")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server_dir = Path(tmp) / "server"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HQ_", "HQPY_"))}
        procs = [
            subprocess.Popen(
                [*HQ, "--server-dir", str(server_dir), "server", "start", "--metrics-port",
                 str(port)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        ]  # fmt: skip
        try:
            hq(server_dir, "server", "wait", "--timeout", "30s")
            t0 = time.perf_counter()
            hq(server_dir, "submit", "--array", f"1-{args.tasks}", "--", "true")
            submit_s = time.perf_counter() - t0
            if args.worker:
                procs.append(
                    subprocess.Popen(
                        [*HQ, "--server-dir", str(server_dir), "worker", "start", "--cpus", "2"],
                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )  # fmt: skip
                hq(server_dir, "worker", "wait", "1")
                time.sleep(1)
            timings(port, "/metrics", 5)  # warm up
            metrics = timings(port, "/metrics", args.scrapes)
            status = timings(port, "/api/status", args.scrapes)
            job = json.loads(hq(server_dir, "--output-mode", "json", "job", "list", "--all"))
            result = {
                "tasks": args.tasks,
                "worker_running_tasks": args.worker,
                "submit_s": round(submit_s, 2),
                "metrics": summary(metrics),
                "status_json": summary(status),
                "job_after": job[0]["task_stats"] if job else None,
            }
            print(json.dumps(result, indent=2))
        finally:
            for p in reversed(procs):
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
