"""A child process that writes to an engine under load and reports every ack.

Usage: python tests/_writer_child.py DATA_DIR THREADS COUNT [fsync [WAL_DIR]]

Prints one line per acknowledged write, ``ACK <id> <subject>``, flushed before
the next write is sent, and ``ERR <code> <subject>`` for a refused one.  Every fifth
write of a thread is a vote on its last assertion (answered once the state has applied
it): ``VOTE <assertion id> <voter>`` when acknowledged.
"""

from __future__ import annotations

import logging
import sys
import threading

from stemedb.engine import Engine, EngineConfig, WriteRequest
from stemedb.errors import StemeError
from stemedb.wal import RecordType


def main() -> None:
    data_dir, threads, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    fsync = sys.argv[4] if len(sys.argv) > 4 else "always"
    wal_dir = sys.argv[5] if len(sys.argv) > 5 else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    cfg = EngineConfig(fsync=fsync, segment_size_bytes=256 * 1024, disk_reserve_bytes=0,
                       checkpoint_wal_bytes=512 * 1024, wal_dir=wal_dir)
    eng = Engine(data_dir, cfg)
    eng.recover()
    eng.start()
    out_lock = threading.Lock()
    print("READY", flush=True)

    def worker(t: int) -> None:
        last = 0
        for i in range(count):
            subject = f"t{t}-{i}"
            try:
                if last and i % 5 == 4:
                    voter = f"v{t}-{i}"
                    eng.write(WriteRequest(RecordType.VOTE, [{"vote": {
                        "assertion_id": last, "voter": voter, "value": 1}}]))
                    line = f"VOTE {last} {voter}"
                else:
                    res = eng.write(WriteRequest(RecordType.ASSERT, [{"assert": {
                        "subject": subject, "predicate": "p",
                        "object": {"i": i, "pad": "x" * 300}, "author": f"w{t}"}}]))
                    last = res.body["id"]
                    line = f"ACK {last} {subject}"
            except StemeError as exc:
                line = f"ERR {exc.code} {subject}"
            with out_lock:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    caller = eng.m.registry.get_sample_value("stemedb_group_commit_by_caller_total") or 0
    print(f"CALLER_COMMITS {int(caller)}", flush=True)
    print("DONE", flush=True)
    eng.close()


if __name__ == "__main__":
    main()
