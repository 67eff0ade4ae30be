#!/usr/bin/env bash
# Idempotent set-up of a dev/CI machine (Debian 12) for lucid-db:
#   - redis-server from Debian's package (apt-get update only when something is missing),
#   - a project-local venv (.venv) with the pinned stand-in servers (docs/architecture.md, Tests),
#   - cargo build of the whole workspace (skip with --no-build).
# Safe to run again: a second run only checks and finishes in well under a second
# (apart from cargo).
set -euo pipefail

usage() { echo "usage: $0 [--no-build]" >&2; exit 2; }

build=1
for arg in "$@"; do
    case "$arg" in
        --no-build) build=0 ;;
        -h|--help) usage ;;
        *) echo "setup: unknown argument: $arg" >&2; usage ;;
    esac
done

# Repo root from this file's location, so the script works from any cwd.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
stamp="$venv/.lucid-requirements"

# Pinned stand-ins; changing this list makes the next run reinstall into the venv.
requirements=(
    "nx-27017==0.8.1"
    "osmem-server==0.1.6"
    "moto[server]==5.2.5"
    # The independent BSON and Extended JSON reader the backup tests check MongoDB's
    # artifacts with (mongodump's layout; no mongorestore can be installed here).
    "pymongo==4.20.1"
)

say() { printf 'setup: %s\n' "$*"; }

# Root in CI; elsewhere use sudo when it exists.
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "setup: not root and no sudo: cannot install system packages" >&2
    fi
fi

# A fresh machine has no package lists: apt-get install finds nothing until
# apt-get update ran. Run it at most once per invocation, and only when needed.
apt_updated=0
apt_install() {
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        "${sudo_cmd[@]}" apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" \
        apt-get install -y -qq --no-install-recommends "$@"
}

# Without systemd, Debian's postinst starts redis through its init script
# (unless policy-rc.d forbids it, as in containers); with systemd it enables
# the unit. Either way a system redis would hold 6379, which backends.sh needs.
# Best effort: never fail set-up over this.
stop_packaged_redis() {
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${sudo_cmd[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/redis-server ]]; then
        "${sudo_cmd[@]}" /etc/init.d/redis-server stop >/dev/null 2>&1 || true
        # Keep it from coming back on a later boot/runlevel change.
        if command -v update-rc.d >/dev/null 2>&1; then
            "${sudo_cmd[@]}" update-rc.d redis-server disable >/dev/null 2>&1 || true
        fi
    fi
    # Whatever is left of the packaged instance: it alone runs as user redis.
    pkill -TERM -u redis -x redis-server 2>/dev/null || true
}

# 1. redis-server (Debian package; redis-tools with redis-cli comes as a dependency).
if command -v redis-server >/dev/null 2>&1; then
    say "redis-server: present ($(command -v redis-server))"
else
    apt_install redis-server
    stop_packaged_redis
    say "redis-server: installed; the packaged service is stopped so 6379 stays free"
fi

# systemd-analyze checks the unit file in the tests (Debian's systemd package; it is not
# run as init here).
if command -v systemd-analyze >/dev/null 2>&1; then
    say "systemd-analyze: present"
else
    apt_install systemd
fi

# zstd (the CLI) is what the volume benchmark compares against (`tar | zstd`).
if command -v zstd >/dev/null 2>&1; then
    say "zstd: present"
else
    apt_install zstd
fi

# curl and jq run docs/backup.md's Elasticsearch recipe (`_bulk` loads) in the backup tests.
for tool in curl jq; do
    if command -v "$tool" >/dev/null 2>&1; then
        say "$tool: present"
    else
        apt_install "$tool"
    fi
done

# age (the stock CLI) is what the backup tests decrypt with: every artifact must open with
# `age -d` alone (docs/backup.md, restoring by hand). `script` (util-linux) gives it the
# terminal it reads passphrases from.
if command -v age >/dev/null 2>&1; then
    say "age: present"
else
    apt_install age
fi

# mkfs.btrfs and mkfs.xfs make the loop-mounted filesystems the volume snapshot tests take
# reflink snapshots on (the tests mount them as root in their temp dirs).
for pair in btrfs-progs:mkfs.btrfs xfsprogs:mkfs.xfs; do
    pkg="${pair%%:*}" tool="${pair#*:}"
    if command -v "$tool" >/dev/null 2>&1 || [[ -x "/usr/sbin/$tool" ]] || [[ -x "/sbin/$tool" ]]; then
        say "$pkg: present"
    else
        apt_install "$pkg"
    fi
done

# 2. Project-local venv with the pinned stand-in servers.
want="$(printf '%s\n' "${requirements[@]}")"
have=""
if [[ -r "$stamp" ]]; then
    have="$(<"$stamp")"
fi
if [[ -x "$venv/bin/python" && "$have" == "$want" ]]; then
    say "venv: up to date ($venv)"
else
    if [[ ! -x "$venv/bin/python" ]]; then
        # Debian splits venv/ensurepip into python3-venv; pyenv/other builds have it.
        if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
            apt_install python3-venv
        fi
        say "venv: creating $venv"
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    say "venv: installing ${requirements[*]}"
    start=$SECONDS
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
    # Written only after a successful install, so a failed run retries next time.
    printf '%s\n' "$want" >"$stamp"
    say "venv: installed in $((SECONDS - start)) s"
fi

# 3. Build everything (tests and examples too) with the committed Cargo.lock.
if [[ $build -eq 1 ]]; then
    if ! command -v cargo >/dev/null 2>&1; then
        echo "setup: cargo not found on PATH (install Rust via rustup)" >&2
        exit 1
    fi
    say "cargo build --locked --workspace --all-targets"
    (cd "$repo_root" && cargo build --locked --workspace --all-targets)
else
    say "cargo build: skipped (--no-build)"
fi
say "done"
