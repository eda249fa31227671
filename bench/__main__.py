"""``python -m bench NAME [flags]``, NAME one of engine, restart, replay, http, stack,
memory, archive, restore, cluster: the same as ``python -m bench.NAME_bench [flags]``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"engine": "bench.engine_bench", "restart": "bench.restart_bench",
            "replay": "bench.replay_bench", "http": "bench.http_bench",
            "stack": "bench.stack_bench", "memory": "bench.memory_bench",
            "archive": "bench.archive_bench", "restore": "bench.restore_bench",
            "cluster": "bench.cluster_bench"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m bench {{{','.join(COMMANDS)}}} [--help]", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]])
    code: int = module.main(args[1:])
    return code


if __name__ == "__main__":
    raise SystemExit(main())
