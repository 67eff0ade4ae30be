#!/usr/bin/env bash
# Run the three development servers lucid-db talks to (docs/architecture.md, Tests), detached,
# on their usual loopback ports:
#   redis          redis-server (Debian)                  LUCID_REDIS_PORT (6379)
#   mongodb        nx-27017 from .venv, file databases    LUCID_MONGO_PORT (27017)
#   elasticsearch  osmem-server from .venv, in memory     LUCID_ES_PORT    (9200)
# Data, logs and pid files live under .run/ in the repo root (git-ignored).
# Tests do not use these: lucid-testkit starts its own servers on free ports.
#
# usage: scripts/backends.sh start|stop|status
#   start   start what is not running; fails if a port is held by something else
#   stop    TERM (then KILL) what our pid files name
#   status  exit 0 if all three run, 3 otherwise
set -euo pipefail
# No job control, so a background `setsid cmd &` is not a process-group leader:
# setsid then execs in place and $! is the server's own pid.
set +m

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
run="$repo_root/.run"
host=127.0.0.1

backends=(redis mongodb elasticsearch)
declare -A port=(
    [redis]="${LUCID_REDIS_PORT:-6379}"
    [mongodb]="${LUCID_MONGO_PORT:-27017}"
    [elasticsearch]="${LUCID_ES_PORT:-9200}"
)
declare -A port_var=(
    [redis]=LUCID_REDIS_PORT
    [mongodb]=LUCID_MONGO_PORT
    [elasticsearch]=LUCID_ES_PORT
)
# What /proc/PID/cmdline must contain for a pid file to be ours (guards
# against a stale pid file whose pid was reused by something else).
declare -A proc_name=(
    [redis]=redis-server
    [mongodb]=nx-27017
    [elasticsearch]=osmem-server
)

start_timeout="${LUCID_BACKEND_TIMEOUT:-30}"   # seconds to wait for readiness
stop_grace=5                                   # seconds between TERM and KILL

say() { printf '%s\n' "$*"; }
err() { printf 'backends: %s\n' "$*" >&2; }

pid_file() { printf '%s/%s.pid' "$run" "$1"; }
port_file() { printf '%s/%s.port' "$run" "$1"; }
log_file() { printf '%s/%s.log' "$run" "$1"; }

# Pid of our running server for backend $1, or nothing (and status 1).
running_pid() {
    local f pid cmd
    f="$(pid_file "$1")"
    [[ -r "$f" ]] || return 1
    pid="$(<"$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmd" == *"${proc_name[$1]}"* ]] || return 1
    printf '%s' "$pid"
}

# The port a running backend was started on (the env may have changed since).
recorded_port() {
    local f
    f="$(port_file "$1")"
    if [[ -r "$f" ]]; then cat "$f"; else printf '%s' "${port[$1]}"; fi
}

# Status 0 if something listens on TCP port $1; prints the holder if ss tells.
port_taken() {
    local p="$1" line
    if command -v ss >/dev/null 2>&1; then
        line="$(ss -Hltnp "sport = :$p" 2>/dev/null | head -n 1)"
        [[ -n "$line" ]] || return 1
        # e.g. LISTEN 0 128 127.0.0.1:9200 0.0.0.0:* users:(("python3",pid=42,fd=3))
        local addr
        addr="$(awk '{print $4}' <<<"$line")"
        if [[ "$line" =~ users:\(\(\"([^\"]*)\",pid=([0-9]+) ]]; then
            printf '%s (pid %s, listening on %s)' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "$addr"
        else
            printf 'a process ss cannot name without root (listening on %s)' "$addr"
        fi
        return 0
    fi
    # No ss: a successful connect means someone listens.
    if (exec 3<>"/dev/tcp/$host/$p") 2>/dev/null; then
        printf 'unknown process (ss not installed)'
        return 0
    fi
    return 1
}

# Status 0 once backend $1 answers on port $2 (one attempt, no waiting).
answers() {
    local p="$2"
    case "$1" in
        redis)
            if command -v redis-cli >/dev/null 2>&1; then
                [[ "$(redis-cli -h "$host" -p "$p" ping 2>/dev/null)" == PONG ]]
            else
                # Subshell: a failed exec redirection must not end this script.
                (
                    exec 3<>"/dev/tcp/$host/$p"
                    printf 'PING\r\n' >&3
                    IFS= read -r -t 2 reply <&3
                    [[ "$reply" == "+PONG"* ]]
                ) 2>/dev/null
            fi
            ;;
        mongodb)
            # Cheap TCP probe first; then one real `hello` with the bson that
            # the venv has anyway (pymongo comes with nx-27017's neosqlite).
            (exec 3<>"/dev/tcp/$host/$p") 2>/dev/null || return 1
            "$venv/bin/python" - "$host" "$p" <<'PY' >/dev/null 2>&1
import socket, struct, sys, bson
body = struct.pack("<IB", 0, 0) + bson.encode({"hello": 1, "$db": "admin"})
msg = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body  # OP_MSG
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    s.sendall(msg)
    buf = b""
    while len(buf) < 4 or len(buf) < struct.unpack("<i", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(1)
        buf += chunk
doc = buf[21:]  # header 16, flagBits 4, section kind 1, then one document
reply = bson.decode(doc[:struct.unpack("<i", doc[:4])[0]])
sys.exit(0 if reply.get("ok") == 1 else 1)
PY
            ;;
        elasticsearch)
            if command -v curl >/dev/null 2>&1; then
                curl -fsS --max-time 2 "http://$host:$p/" >/dev/null 2>&1
            else
                (exec 3<>"/dev/tcp/$host/$p") 2>/dev/null
            fi
            ;;
    esac
}

# The lines backend $1 logged since its latest start (the log is appended to).
last_start_log() {
    awk '/^=== / { n = 0 } { line[n++] = $0 } END { s = n > 20 ? n - 20 : 0; for (i = s; i < n; i++) print line[i] }' \
        "$(log_file "$1")" >&2
}

now_ms() { printf '%s' "$((${EPOCHREALTIME/./} / 1000))"; }

osmem_binary() {
    if [[ -n "${OSMEM_SERVER_BIN:-}" ]]; then
        printf '%s' "$OSMEM_SERVER_BIN"
        return
    fi
    # The wheel ships the (Go) binary inside the package, not in .venv/bin.
    local candidates=("$venv"/lib/python3*/site-packages/osmem_server/bin/osmem-server)
    [[ -x "${candidates[0]}" ]] || return 1
    printf '%s' "${candidates[0]}"
}

# Command line for backend $1 into the global array `cmd`.
server_command() {
    local p="${port[$1]}"
    case "$1" in
        redis)
            cmd=(redis-server "$repo_root/configs/redis.conf" --port "$p" --dir "$run/redis")
            ;;
        mongodb)
            # --data-dir: one SQLite file per logical database (.run/mongodb/<db>.db);
            # a single --db file would make dropDatabase drop every database.
            # nx-27017 keeps a pid file of its own even in the foreground and
            # refuses to start while it names a live process, so it gets its
            # own path (not ours); it logs to stderr as well as --log-file, so
            # the file log goes to /dev/null and stderr to .run/mongodb.log.
            # Its pid file survives a KILL; we know ours is not running, so drop it.
            rm -f "$run/mongodb/nx-27017.pid"
            cmd=("$venv/bin/nx-27017" --host "$host" --port "$p"
                --data-dir "$run/mongodb"
                --pid-file "$run/mongodb/nx-27017.pid" --log-file /dev/null)
            ;;
        elasticsearch)
            # osmem-server's default port is random (127.0.0.1:0), and it exits
            # when stdin closes unless -no-stdin-watch. It keeps everything in
            # memory: there is no data dir.
            cmd=("$(osmem_binary)" -addr "$host:$p" -no-stdin-watch -no-ja)
            ;;
    esac
}

check_installed() {
    local missing=0
    if ! command -v redis-server >/dev/null 2>&1; then
        err "redis-server not found: run scripts/setup.sh (apt-get install redis-server)"
        missing=1
    fi
    if [[ ! -x "$venv/bin/nx-27017" ]]; then
        err "nx-27017 not found in $venv: run scripts/setup.sh --no-build"
        missing=1
    fi
    if ! osmem_binary >/dev/null; then
        err "osmem-server not found in $venv: run scripts/setup.sh --no-build"
        missing=1
    fi
    return "$missing"
}

cmd_start() {
    check_installed || exit 1

    local b p holder conflict=0
    if [[ ! "$start_timeout" =~ ^[0-9]+$ ]]; then
        err "LUCID_BACKEND_TIMEOUT=$start_timeout is not a whole number of seconds"
        exit 1
    fi
    # The ports must differ, or the second server would "hold" the first one's port.
    local -A seen=()
    for b in "${backends[@]}"; do
        p="${port[$b]}"
        if [[ ! "$p" =~ ^[0-9]+$ ]] || ((10#$p < 1 || 10#$p > 65535)); then
            err "${port_var[$b]}=$p is not a TCP port"
            exit 1
        fi
        if [[ -n "${seen[$p]:-}" ]]; then
            err "$b and ${seen[$p]} are both set to port $p"
            exit 1
        fi
        seen[$p]=$b
    done

    # Check every port before starting anything, so a conflict leaves nothing
    # half started.
    local -a to_start=()
    local pid
    for b in "${backends[@]}"; do
        if pid="$(running_pid "$b")"; then
            say "$b: already running (pid $pid, $host:$(recorded_port "$b"))"
            continue
        fi
        rm -f "$(pid_file "$b")" "$(port_file "$b")"
        p="${port[$b]}"
        if holder="$(port_taken "$p")"; then
            err "$b: port $p (${port_var[$b]}) is already in use by $holder;" \
                "stop it or set ${port_var[$b]} to another port"
            conflict=1
            continue
        fi
        to_start+=("$b")
    done
    ((conflict == 0)) || exit 1
    ((${#to_start[@]} > 0)) || return 0

    mkdir -p "$run/redis" "$run/mongodb"
    local -a cmd
    for b in "${to_start[@]}"; do
        server_command "$b"
        printf '=== %s start: %s\n' "$(date -Is)" "${cmd[*]}" >>"$(log_file "$b")"
        # setsid: own session, so the server survives this script and its
        # terminal; stdin from /dev/null, output appended to the log.
        (cd "$run" && exec setsid "${cmd[@]}" </dev/null >>"$(log_file "$b")" 2>&1) &
        printf '%s\n' "$!" >"$(pid_file "$b")"
        printf '%s\n' "${port[$b]}" >"$(port_file "$b")"
    done

    # Wait for all of them together; they start in parallel.
    local failed=0 deadline
    deadline=$(($(now_ms) + start_timeout * 1000))
    for b in "${to_start[@]}"; do
        pid="$(<"$(pid_file "$b")")"
        p="${port[$b]}"
        while ! answers "$b" "$p"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                err "$b: exited during start-up; its log ($(log_file "$b")) says:"
                last_start_log "$b"
                rm -f "$(pid_file "$b")" "$(port_file "$b")"
                failed=1
                continue 2
            fi
            if (($(now_ms) >= deadline)); then
                err "$b: no answer on $host:$p within ${start_timeout}s; stopping it." \
                    "Its log ($(log_file "$b")) says:"
                last_start_log "$b"
                stop_pids "$pid"
                rm -f "$(pid_file "$b")" "$(port_file "$b")"
                failed=1
                continue 2
            fi
            sleep 0.1
        done
        say "$b: started (pid $pid), listening on $host:$p"
    done
    if ((failed)); then
        err "some backends did not start; 'scripts/backends.sh stop' stops the others"
        exit 1
    fi
}

# TERM the given pids, wait up to $stop_grace seconds for all, then KILL.
stop_pids() {
    local pid left
    kill -TERM "$@" 2>/dev/null || true
    local deadline
    deadline=$(($(now_ms) + stop_grace * 1000))
    while :; do
        left=()
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); fi
        done
        ((${#left[@]} > 0)) || return 0
        if (($(now_ms) >= deadline)); then
            err "no exit ${stop_grace}s after TERM: sending KILL to ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
}

cmd_stop() {
    local b pid
    local -a pids=() names=()
    for b in "${backends[@]}"; do
        if pid="$(running_pid "$b")"; then
            pids+=("$pid")
            names+=("$b (pid $pid)")
        elif [[ -e "$(pid_file "$b")" ]]; then
            say "$b: not running (stale pid file removed)"
        else
            say "$b: not running"
        fi
    done
    # Signal all first and wait once: nx-27017 and osmem take 1-2 s each to exit.
    if ((${#pids[@]} > 0)); then
        stop_pids "${pids[@]}"
        for b in "${names[@]}"; do say "$b: stopped"; done
    fi
    for b in "${backends[@]}"; do
        rm -f "$(pid_file "$b")" "$(port_file "$b")"
    done
}

cmd_status() {
    local b pid all=0
    for b in "${backends[@]}"; do
        if pid="$(running_pid "$b")"; then
            say "$b: running (pid $pid, $host:$(recorded_port "$b"))"
        else
            say "$b: stopped"
            all=3
        fi
    done
    return "$all"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
