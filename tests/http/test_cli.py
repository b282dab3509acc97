"""`hq server start --metrics-port/--metrics-host`: where it listens, and how it fails."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tests.e2e.harness import HqEnv, free_ports

pytestmark = pytest.mark.e2e


def get_status(host: str, port: int) -> int:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return int(response.status)


def test_metrics_host_is_where_it_listens(hq_env: HqEnv) -> None:
    [port] = free_ports(1)
    hq_env.start_server("--metrics-port", str(port), "--metrics-host", "127.0.0.2")
    assert get_status("127.0.0.2", port) == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_metrics_port_in_use_is_a_clear_error(hq_env: HqEnv) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = hq_env.command("server", "start", "--metrics-port", str(port), expect_fail=True)
    assert "Cannot start the server: [Errno 98] Address already in use" in out
    assert not (hq_env.server_dir / "hq-current").exists()


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_bad_metrics_port_is_a_usage_error(hq_env: HqEnv, port: str) -> None:
    result = hq_env.run("server", "start", "--metrics-port", port, check=False)
    assert result.returncode == 2
    assert "--metrics-port" in result.stderr
