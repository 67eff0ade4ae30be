#!/usr/bin/env bash
# Everything CI checks, from a fresh Debian 12 machine: set-up when needed, formatting,
# clippy with warnings as errors, and the whole test suite against real servers (the test
# kit starts them on free ports; nothing needs to be running). Prints the time it took.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
start=$SECONDS

step() { printf '\n== %s\n' "$*"; }

step "set-up"
scripts/setup.sh --no-build

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "src/ uses no driver crate (docs/architecture.md, Dependency rules)"
# tests/it/layering.rs: the lucid-db package lists no driver crate in [dependencies], and no
# path in src/ names one or a lucid_actors re-export of one.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked -p lucid-db -E 'test(/^layering::/)'
else
    cargo test --locked -p lucid-db --test it layering::
fi

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast
    # nextest does not run doc tests
    cargo test --locked --workspace --doc
else
    cargo test --locked --workspace --no-fail-fast
fi

elapsed=$((SECONDS - start))
printf '\nscripts/test.sh: all checks passed in %dm%02ds\n' $((elapsed / 60)) $((elapsed % 60))
