# Helpers the benchmark scripts share. Sourced after ROOT (the workspace)
# is set: . "$ROOT/benches/lib.sh"

# require SCRIPT TOOL...: exits with one line naming the first missing tool.
require() {
    local script=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$script: $tool is required (scripts/install-test-deps.sh)" >&2; exit 1; }
    done
}

# Sets BALLAST to a release build of this tree unless it names a binary.
ballast_binary() {
    if [ -z "${BALLAST:-}" ]; then
        echo "building ballast (release)..." >&2
        (cd "$ROOT" && cargo build --quiet --release --bin ballast)
        BALLAST=${CARGO_TARGET_DIR:-$ROOT/target}/release/ballast
    fi
}

now() { date +%s.%N; }
# Seconds from $1 to $2 (Unix times, as `now` prints them), three decimals.
between() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
# Seconds since $1 (a `now`).
since() { between "$1" "$(now)"; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# Starts moto_server from $VENV on a free loopback port with a bucket
# "bench"; sets MOTO (its pid, for the caller's cleanup) and PORT.
start_moto() {
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
    MOTO=$!
    until curl -s -o /dev/null "http://127.0.0.1:$PORT/"; do sleep 0.1; done
    curl -s -X PUT "http://127.0.0.1:$PORT/bench" >/dev/null
}
