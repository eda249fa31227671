"""``stemedb serve`` (also installed as ``stemedb-api``): run the HTTP server."""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Callable

import click

from .. import limits
from ..config import DEFAULT_CONFIG_PATH, DEFAULT_DATA_DIR, DEFAULT_LISTEN, Config, load_config
from ..errors import ConfigError
from ..logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from ..server import INSECURE_FLAG, Exit, MainThreadHost, SignalRelay
from ..server import serve as serve_node

log = logging.getLogger("stemedb.server")

PROCESS_NAME = b"stemedb-api"  # what `pgrep stemedb-api` (the runbook's strace line) finds
_PR_SET_NAME = 15  # from <linux/prctl.h>


def _set_process_name() -> None:
    """Name the process ``stemedb-api`` whichever way it was started (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(PROCESS_NAME), 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("could not set the process name", exc_info=True)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML config file [default: {DEFAULT_CONFIG_PATH} when present]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help=f"data directory (STEMEDB_DATA_DIR) [default: {DEFAULT_DATA_DIR}]")
@click.option("--wal-dir", type=click.Path(file_okay=False), default=None,
              help="keep the WAL in this directory, on a disk of its own; the data "
                   "directory links to it as wal/ (STEMEDB_WAL_DIR) [default: "
                   "<data-dir>/wal]")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help=f"address to listen on (STEMEDB_SERVER_LISTEN) [default: {DEFAULT_LISTEN}]")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
              help="plain text or one JSON object per line (STEMEDB_SERVER_LOG_FORMAT) "
                   "[default: plain]")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
              help="(STEMEDB_SERVER_LOG_LEVEL) [default: info]")
@click.option(INSECURE_FLAG, "insecure", is_flag=True, default=False,
              help="allow listening beyond loopback with no auth tokens configured "
                   "(anyone who reaches the port can write and administer) [default: off]")
def serve(config_path: str | None, data_dir: str | None, wal_dir: str | None,
          listen: str | None, log_format: str | None, log_level: str | None,
          insecure: bool) -> None:
    """Run the server: listen, replay the WAL, serve the API.

    Configuration comes from the TOML file, then STEMEDB_* variables, then these
    flags.  SIGTERM drains in-flight writes, checkpoints and exits 0.

    Example: stemedb serve --data-dir ./stemedb-data --listen 127.0.0.1:18180
    """
    overrides = {("", "data_dir"): data_dir, ("wal", "dir"): wal_dir,
                 ("server", "listen"): listen,
                 ("server", "log_format"): log_format, ("server", "log_level"): log_level}
    try:
        cfg = load_config(config_path, env=os.environ, overrides=overrides)
    except ConfigError as exc:
        click.echo(f"stemedb serve: {exc}", err=True)
        sys.exit(int(Exit.REFUSED))
    setup_logging(str(cfg.get("server", "log_format")), str(cfg.get("server", "log_level")))
    _set_process_name()
    # The WAL writer gives up the GIL in every write, fdatasync and SQLite call; with
    # CPython's default 5 ms switch interval it then waits behind the event loop and
    # reader threads; a shorter interval hands it back sooner (measured in
    # bench/results/history.md, section 5 and after).
    sys.setswitchinterval(limits.gil_switch_interval_seconds)
    effective = cfg.effective()
    effective["data_dir"] = os.path.abspath(cfg.data_dir)
    if effective["wal.dir"]:
        effective["wal.dir"] = os.path.abspath(effective["wal.dir"])
    # One line; in JSON logs the configuration is also a structured field.
    log.info("effective config (from %s; secrets masked): %s",
             cfg.source or "defaults and environment", json.dumps(effective, sort_keys=True),
             extra={"config": effective})
    code = _run_with_writer_on_main_thread(cfg, insecure)
    if code == Exit.STOPPED_DURING_REPLAY:
        # The recovery thread is inside SQLite; do not wait for it (nothing was
        # acknowledged, and SQLite rolls back the open transaction on the next open).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    sys.exit(int(code))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop (libuv: less Python per request than asyncio's selector loop)
    where it is installed, else the standard one."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return None
    return uvloop.new_event_loop


def _run_with_writer_on_main_thread(cfg: Config, insecure: bool) -> Exit:
    """The event loop runs on a thread; the main thread hosts the WAL writer.

    So the WAL's write(2)/fdatasync(2) happen on the thread whose id is the process id,
    and the runbook's ``strace -p $(pgrep stemedb-api) -e fsync,fdatasync`` (no ``-f``)
    shows them.  Signals arrive on the main thread and are relayed to the loop.
    """
    host = MainThreadHost()
    relay = SignalRelay()
    relay.install()
    result: list[Exit] = []
    failure: list[BaseException] = []

    def http() -> None:
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                result.append(runner.run(serve_node(
                    cfg, insecure_allow_unauthenticated=insecure, writer_host=host,
                    signal_relay=relay)))
        except BaseException as exc:  # reported on the main thread
            failure.append(exc)
        finally:
            host.finish()

    t = threading.Thread(target=http, name="stemedb-http")
    t.start()
    host.run()
    t.join()
    if failure:
        raise failure[0]
    return result[0]
