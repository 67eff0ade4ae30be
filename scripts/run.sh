#!/usr/bin/env bash
# Run lucid-db in the foreground against the development servers, from a fresh Debian 12
# machine: set-up when needed (scripts/setup.sh), the three servers on their usual ports
# (scripts/backends.sh start), then the daemon with configs/dev.toml. Ctrl-C stops the
# daemon; `scripts/backends.sh stop` stops the servers.
# Extra arguments go to `lucid-db` before `run` (e.g. --log-format json).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

scripts/setup.sh
scripts/backends.sh start

mkdir -p .run/state .run/volumes
export LUCID_DB__STATE_DIR="$repo_root/.run/state"
export LUCID_DB__VOLUMES__ROOT="$repo_root/.run/volumes"
exec cargo run --locked --quiet --bin lucid-db -- --config configs/dev.toml "$@" run
