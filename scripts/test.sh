#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine, then run lint, types and
# the whole test suite.  Extra arguments go to pytest (e.g. scripts/test.sh -k wal).
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools the tests drive for real: promtool and prometheus (alert rules, a real
# scrape), strace (syscall fault injection), and what the benchmarks' smoke test runs:
# wrk (HTTP load), redis-benchmark and pgbench (the peers), a C compiler (a small
# LD_PRELOAD shim that slows fdatasync), valgrind (the replay bench's instruction count),
# and etcd (the cluster tests run a real one).
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-server)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u)
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test,bench]'

python3 -m ruff check src tests bench
python3 -m mypy
python3 -m pytest "$@"
