"""The servers the HTTP benchmark compares against, each started and stopped by the bench.

- :class:`Postgres`: PostgreSQL from ``/usr/lib/postgresql/*/bin``, ``initdb`` into a
  temp dir as the unprivileged ``postgres`` user (``useradd`` when missing), listening on
  127.0.0.1 only, ``fsync=on``, ``synchronous_commit=on``; load from ``pgbench`` with a
  custom one-INSERT script (one INSERT per transaction) into ``assertions_pk`` (the
  columns and the primary key only, as a new user would try) or ``assertions`` (the
  same columns and three secondary indexes, shaped like StemeDB's), and a
  SELECT-by-primary-key script for reads; latencies from pgbench's per-transaction log.
- :class:`Redis`: ``redis-server --appendonly yes --appendfsync always`` on 127.0.0.1
  with a temp dir; load from ``redis-benchmark -t set``.

Both are installed with ``apt-get install -y`` when missing.  Every wait is bounded,
and ``stop()`` is safe to call twice (callers use try/finally).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

from ._common import latency_summary_ms, run

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
APT_TIMEOUT_SECONDS = 900.0
PG_USER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def apt_install(*packages: str) -> None:
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    run(["apt-get", "install", "-y", *packages], timeout=APT_TIMEOUT_SECONDS,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_tool(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        apt_install(package)
        path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found even after apt-get install {package}")
    return path


def pg_bin_dir() -> str:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                  key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0)
    if not dirs:
        apt_install("postgresql")
        dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not dirs:
        raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql/*/bin")
    return dirs[-1]


def wait_port(port: int, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:  # bounded by the deadline
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_seconds:.0f}s")


def _traversable_by(user: str, path: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return True  # created by useradd below, and then root's dirs are checked by initdb
    res = subprocess.run(["runuser", "-u", user, "--", "test", "-x", path], timeout=30,
                         check=False, capture_output=True)
    return res.returncode == 0


def pg_insert_script(table: str) -> str:
    """One INSERT, one transaction (pgbench runs each script line in autocommit)."""
    return (f"INSERT INTO {table}(subject, predicate, object, author, confidence) VALUES "
            "('urn:example:sensor/' || :client_id, 'reading', "
            "'{\"celsius\": 21, \"seq\": 1}', 'writer-' || :client_id, 0.9);\n")


def pg_select_script(table: str, max_id: int) -> str:
    """One SELECT of a row by its primary key, a random one of the ids 1..max_id."""
    return (f"\\set id random(1, {max_id})\n"
            "SELECT id, subject, predicate, object, author, confidence, created_at "
            f"FROM {table} WHERE id = :id;\n")


class Postgres:
    # Two tables of the same columns: the one a new user would try (its primary key
    # only), and one with secondary indexes like StemeDB's assertions table.
    PK_TABLE = "assertions_pk"
    INDEXED_TABLE = "assertions"
    COLUMNS = ("id bigserial PRIMARY KEY, subject text NOT NULL, predicate text NOT NULL, "
               "object jsonb NOT NULL, author text NOT NULL, confidence double precision, "
               "created_at timestamptz NOT NULL DEFAULT now()")
    INDEXES = ("CREATE INDEX ON assertions(subject, id); "
               "CREATE INDEX ON assertions(predicate, id); "
               "CREATE INDEX ON assertions(author, id);")
    TABLE = (f"CREATE TABLE {INDEXED_TABLE} ({COLUMNS}); {INDEXES} "
             f"CREATE TABLE {PK_TABLE} ({COLUMNS});")
    SCRIPT = pg_insert_script(INDEXED_TABLE)
    SETTINGS = ("fsync=on, synchronous_commit=on, wal_sync_method=fdatasync, "
                "shared_buffers=256MB, max_connections=200")

    def __init__(self, root: str) -> None:
        self.root = root
        self.own_root: str | None = None
        if os.geteuid() == 0 and not _traversable_by(PG_USER, root):
            # e.g. a pytest tmp dir (mode 0700): use a sibling under /tmp instead.
            self.root = self.own_root = tempfile.mkdtemp(prefix="stemedb-bench-pg-",
                                                         dir="/tmp")
        self.bin = pg_bin_dir()
        self.pgbench = shutil.which("pgbench") or os.path.join(self.bin, "pgbench")
        self.data = os.path.join(self.root, "pgdata")
        self.sock = os.path.join(self.root, "pgsock")
        self.port = free_port()
        self.started = False

    def _as_pg(self, cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        return run(cmd, timeout=timeout, cwd="/")

    def start(self) -> None:
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                run(["useradd", "-m", PG_USER], timeout=60)
            os.chmod(self.root, 0o755)
        for d in (self.data, self.sock):
            os.makedirs(d, exist_ok=True)
            if os.geteuid() == 0:
                shutil.chown(d, PG_USER, PG_USER)
        self._as_pg([os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                     "--auth=trust", "--no-sync"])
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.sock} -c fsync=on "
                "-c synchronous_commit=on -c wal_sync_method=fdatasync "
                "-c max_connections=200 -c shared_buffers=256MB")
        self.started = True  # from here on, stop() runs pg_ctl stop
        self._as_pg([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
                     os.path.join(self.data, "server.log"), "-o", opts, "-w",
                     "-t", str(int(START_TIMEOUT_SECONDS)), "start"],
                    timeout=START_TIMEOUT_SECONDS + 10)
        self.psql(self.TABLE)

    def psql(self, sql: str) -> str:
        return self._as_pg([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p",
                            str(self.port), "-U", "postgres", "-d", "postgres",
                            "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]).stdout

    def version(self) -> str:
        return self.psql("SHOW server_version").strip()

    def bench(self, clients: int, seconds: float, table: str = INDEXED_TABLE,
              script: str | None = None, name: str = "insert") -> dict[str, Any]:
        """pgbench with ``script`` (by default one INSERT into ``table``); latencies
        from its transaction log."""
        work = os.path.join(self.root, f"pgbench-{name}-{table}-{clients}")
        os.makedirs(work, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(work, PG_USER, PG_USER)
        path = os.path.join(work, f"{name}.sql")
        with open(path, "w") as f:
            f.write(pg_insert_script(table) if script is None else script)
        cmd = [self.pgbench, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
               "-n", "-f", path, "-c", str(clients), "-j", str(min(clients, 2)),
               "-T", str(max(1, round(seconds))), "-l", "--log-prefix",
               os.path.join(work, "txlog"), "postgres"]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        out = run(cmd, timeout=seconds + 120, cwd=work).stdout
        lat: list[float] = []
        for log in glob.glob(os.path.join(work, "txlog*")):
            with open(log) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        lat.append(int(parts[2]) / 1e6)
        tps = float("nan")
        for line in out.splitlines():
            if line.startswith("tps = "):
                tps = float(line.split()[2])
        return {"requests": len(lat), "per_s": tps, **latency_summary_ms(lat)}

    def seed(self, table: str, rows: int) -> int:
        """Insert ``rows`` rows into ``table`` in one statement; return the highest id."""
        self.psql(f"INSERT INTO {table}(subject, predicate, object, author, confidence) "
                  "SELECT 'urn:example:sensor/' || (g % 1000), 'reading', "
                  "jsonb_build_object('celsius', 20 + g % 17, 'seq', g), "
                  f"'writer-' || (g % 16), 0.9 FROM generate_series(1, {rows}) g")
        return int(self.psql(f"SELECT max(id) FROM {table}").strip())

    def reads_under_writes(self, table: str, max_id: int, seconds: float,
                           read_clients: int, write_clients: int) -> dict[str, Any]:
        """pgbench SELECT-by-key clients while (when ``write_clients``) another pgbench
        INSERTs into the same table, started half a second before; both results."""
        out: dict[str, dict[str, Any]] = {}
        errors: list[BaseException] = []

        def writes() -> None:
            try:
                out["w"] = self.bench(write_clients, seconds + 1, table, name="writers")
            except BaseException as exc:  # reported by the caller's thread
                errors.append(exc)

        t = threading.Thread(target=writes)
        if write_clients > 0:
            t.start()
            time.sleep(0.5)  # the write load is running before the reads start
        try:
            out["r"] = self.bench(read_clients, seconds, table,
                                  pg_select_script(table, max_id), name=f"reads-{write_clients}w")
        finally:
            if write_clients > 0:
                t.join(seconds + 180)
        if errors:
            raise RuntimeError(f"the pgbench writers failed: {errors[0]!r}") from errors[0]
        w, r = out.get("w", {}), out["r"]
        return {"reads_per_s": r["per_s"], "read_p50_ms": r["p50_ms"],
                "read_p99_ms": r["p99_ms"], "read_errors": 0,
                "writes_per_s": w.get("per_s", float("nan")),
                "write_p50_ms": w.get("p50_ms", float("nan")),
                "write_p99_ms": w.get("p99_ms", float("nan"))}

    def stop(self) -> None:
        if self.started:
            self.started = False
            with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
                self._as_pg([os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m",
                             "fast", "-w", "-t", str(int(STOP_TIMEOUT_SECONDS)), "stop"],
                            timeout=STOP_TIMEOUT_SECONDS + 10)
        if self.own_root is not None:
            shutil.rmtree(self.own_root, ignore_errors=True)


class Redis:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "redis")
        self.server = ensure_tool("redis-server", "redis-server")
        self.benchmark = ensure_tool("redis-benchmark", "redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self.log = open(os.path.join(self.root, "redis.log"), "wb")  # noqa: SIM115 - stop()
        self.proc = subprocess.Popen(
            [self.server, "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", self.root, "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--daemonize", "no", "--protected-mode", "yes"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, START_TIMEOUT_SECONDS)

    def version(self) -> str:
        return run([self.server, "--version"], timeout=10).stdout.split()[2].split("=")[1]

    def _run(self, clients: int, n: int) -> tuple[float, dict[str, float]]:
        out = run([self.benchmark, "-h", "127.0.0.1", "-p", str(self.port), "-t", "set",
                   "-c", str(clients), "-n", str(n), "-d", "150", "-r", "1000000",
                   "--csv", "--precision", "3"], timeout=600).stdout
        lines = [ln for ln in out.splitlines() if ln.startswith('"SET"')]
        if not lines:
            raise RuntimeError(f"unexpected redis-benchmark output: {out[-500:]}")
        cols = [c.strip('"') for c in lines[-1].split(",")]
        # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
        # "p95_latency_ms","p99_latency_ms","max_latency_ms"
        return float(cols[1]), {"p50_ms": float(cols[4]), "p99_ms": float(cols[6])}

    def bench(self, clients: int, seconds: float) -> dict[str, Any]:
        """redis-benchmark has no duration flag: probe the rate, then size -n to it."""
        rps, _ = self._run(clients, max(200, clients * 20))
        n = max(clients * 50, int(rps * seconds))
        rps, lat = self._run(clients, n)
        return {"requests": n, "per_s": rps, **lat}

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_SECONDS)
        self.log.close()
