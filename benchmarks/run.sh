#!/usr/bin/env bash
# One command for the whole comparison: installs what is missing, then runs bench_all.py.
#
#   benchmarks/run.sh             # full run (about 5 minutes on 2 cores)
#   benchmarks/run.sh --quick     # short smoke run
#   benchmarks/run.sh --send      # node.send() vs raw pyzmq and zmq.asyncio at 64 in flight
#   benchmarks/run.sh --help      # every option of bench_all.py
#
# Python: $PYTHON if set, else the active virtualenv, else ./.venv (created if missing).
# Installs: nats-server with apt-get when it is not on PATH (needs root or sudo; without
# it the nats stack is reported as an error and the rest still runs), and the Python
# peers through the project's `bench` extra (pip install -e '.[bench]') when one of
# them does not import. Results go to benchmarks/results/ (or --out DIR).
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    py="$VIRTUAL_ENV/bin/python"
else
    if [[ ! -x .venv/bin/python ]]; then
        echo "run.sh: creating .venv" >&2
        python3 -m venv .venv
    fi
    py=.venv/bin/python
fi

if ! command -v nats-server >/dev/null 2>&1; then
    echo "run.sh: nats-server not found; installing it with apt-get" >&2
    if [[ "$(id -u)" == 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1; then
        sudo=(sudo -n)
    else
        sudo=(false)
    fi
    if ! { "${sudo[@]}" apt-get update -q && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q nats-server; } >&2; then
        echo "run.sh: could not install nats-server; the nats stack will be an error" >&2
    fi
fi

if ! "$py" -c 'import catga_zmq, nats, grpc, zerorpc, gevent, msgpack, matplotlib, uvloop' \
        >/dev/null 2>&1; then
    echo "run.sh: installing the benchmark peers: pip install -e '.[bench]'" >&2
    "$py" -m pip install -q -e '.[bench]' >&2
fi

export CATGA_BENCH_LAUNCHER="benchmarks/run.sh${*:+ $*}"
exec "$py" benchmarks/bench_all.py "$@"
