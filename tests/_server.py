"""Start a real ``stemedb serve`` subprocess on a free loopback port, and stop it.

Each server gets its own data directory, an explicit (possibly empty) config file so
that a machine's ``/etc/stemedb/api.toml`` never leaks in, small WAL segments and no
disk reserve, so tests are fast and independent of free space.  Every wait is
bounded; a server that dies early raises with its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests._ports import free_port

START_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.02
TEST_SEGMENT_SIZE_BYTES = 1024 * 1024  # 1 MiB: rotations happen in tests too

SERVE_CMD = [sys.executable, "-c", "from stemedb.cli import main; main()", "serve"]


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEMEDB_")}
    env.update({"STEMEDB_WAL_DISK_RESERVE_BYTES": "0",
                "STEMEDB_WAL_SEGMENT_SIZE_BYTES": str(TEST_SEGMENT_SIZE_BYTES),
                "STEMEDB_SERVER_DRAIN_GRACE_SECONDS": "10"})
    env.update(extra)
    return env


class ServerProcess:
    def __init__(self, workdir: Path, *, config_toml: str = "", args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, host: str = "127.0.0.1",
                 data_dir: Path | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.workdir = workdir
        self.data_dir = data_dir or workdir / "data"
        self.config_path = workdir / "api.toml"
        self.config_path.write_text(config_toml)
        self.log_path = workdir / f"server-{time.monotonic_ns()}.log"
        self.host = host
        self.port = free_port()
        self.args = args
        self.env = server_env(**(env or {}))
        self.tls = tls  # the client side of a server started with [server] tls_*
        # A command that runs the server (strace, say): stop() then signals the server
        # itself, its child, since strace would detach and leave it running.
        self.prefix: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self, *, wait: str | None = "ready") -> ServerProcess:
        """Start; then wait until it serves (``"healthy"``), is ready, or not at all."""
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.prefix, *SERVE_CMD, "--config", str(self.config_path),
             "--data-dir", str(self.data_dir), "--listen", f"{self.host}:{self.port}", *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        if wait is not None:
            self.wait_for("/healthz" if wait == "healthy" else "/readyz")
        return self

    def wait_for(self, path: str, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_seconds
        with httpx.Client(timeout=2.0, verify=self.tls or True) as c:
            while time.monotonic() < deadline:  # bounded by the deadline
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                       f"{self.log()}")
                with contextlib.suppress(httpx.TransportError):
                    if c.get(self.url + path).status_code == 200:
                        return
                time.sleep(POLL_SECONDS)
        raise TimeoutError(f"{path} not 200 after {timeout_seconds}s:\n{self.log()}")

    def client(self, **kw: Any) -> httpx.Client:
        kw.setdefault("timeout", 10.0)
        if self.tls is not None:
            kw.setdefault("verify", self.tls)
        return httpx.Client(base_url=self.url, **kw)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_seconds)
        finally:
            self._close_log()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop (SIGTERM by default); SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self.prefix:
                for pid in _children(self.proc.pid):  # strace exits when its tracee does
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                for pid in _children(self.proc.pid) if self.prefix else []:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_SECONDS)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_serve(workdir: Path, args: list[str], env: dict[str, str] | None = None,
              timeout_seconds: float = START_TIMEOUT_SECONDS
              ) -> subprocess.CompletedProcess[str]:
    """Run ``stemedb serve`` expecting it to refuse to start (returns at exit)."""
    return subprocess.run([*SERVE_CMD, *args], capture_output=True, text=True,
                          env=server_env(**(env or {})), cwd=workdir,
                          timeout=timeout_seconds, check=False)
