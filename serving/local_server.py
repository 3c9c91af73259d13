"""A ``bentoml serve`` child process on loopback, for the integration tests and benchmarks.

It binds 127.0.0.1 on a free port, runs in its own process group, and :meth:`stop` also
kills the BentoML workers (which start their own process groups) so nothing outlives it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from engage.config import PROJECT_ROOT

SERVICE = "serving.service:EngageService"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bentoml_serve_args(host: str, port: int, root: Path) -> list[str]:
    """The ``bentoml serve`` command line of the engage service (``engage serve`` too)."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        SERVICE,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(root),
    ]


class LocalServer:
    """``bentoml serve`` of the engage service on ``127.0.0.1:<free port>``.

    Args:
        env: the server's environment (see ``cli.serve.serve_env``).
        log: file receiving the server's stdout and stderr.
        root: the project folder (the service's working directory).

    """

    def __init__(self, env: dict[str, str], log: Path, root: Path = PROJECT_ROOT) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = bentoml_serve_args("127.0.0.1", self.port, root)
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline: float) -> None:
        """Block until ``/readyz`` answers 200 (``deadline`` on ``time.monotonic()``).

        Raises:
            RuntimeError: the server exited or was not ready by the deadline (the end of
                its log is in the message).
        """
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in time:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the server and any worker it leaves behind (by pid: they are ours)."""
        import psutil

        try:
            workers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        _, alive = psutil.wait_procs(workers, timeout=5)
        for w in alive:
            w.kill()
        self._out.close()


__all__ = ["SERVICE", "LocalServer", "free_port", "bentoml_serve_args"]
