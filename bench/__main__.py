"""``python -m bench {engine,restart,replay,http,stack,memory,archive,restore} [flags]``:
the same as each module's own ``python -m bench.<name>_bench [flags]``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"engine": "bench.engine_bench", "restart": "bench.restart_bench",
            "replay": "bench.replay_bench", "http": "bench.http_bench",
            "stack": "bench.stack_bench", "memory": "bench.memory_bench",
            "archive": "bench.archive_bench", "restore": "bench.restore_bench"}


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
