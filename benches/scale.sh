#!/usr/bin/env bash
# What the engine costs as a pool fills up, with the real daemon and fio's
# nbd engine over the unix socket:
#
# 1. One thin volume written sequentially with 1 MiB writes (iodepth 8) up
#    to each of STEPS (GiB written in all, default 8 24 48), then RANDOM_S
#    seconds of 4 KiB random writes (iodepth 32) over what was written.
#    After each step: the daemon's RSS and the metadata's size on disk
#    (ROOT/meta).
# 2. The daemon restarted (SIGTERM, then a new one): the time until the
#    control API answers, its RSS then (sled reads its log to open, and
#    what that used is handed back within a second) and at rest two
#    commit-timer ticks later.
# 3. On a fresh 1 GiB volume, fully written: 4 KiB random-read IOPS
#    (iodepth 32, READ_S seconds, median of ROUNDS runs) at each depth of
#    DEPTHS snapshots (default 0 50 200), each snapshot after 2 MiB of
#    scattered 4 KiB writes.
#
# The disk needs room for the largest step plus some: the pool is deleted
# at the end. Env: BENCH_DIR (default /var/tmp/ballast-scale-bench),
# STEPS, RANDOM_S (default 60), DEPTHS, READ_S (default 10), ROUNDS
# (default 3), META_CACHE (the daemon's --meta-cache; default its own),
# CARGO_TARGET_DIR.
set -euo pipefail

STEPS=${STEPS:-8 24 48}
RANDOM_S=${RANDOM_S:-60}
DEPTHS=${DEPTHS:-0 50 200}
READ_S=${READ_S:-10}
ROUNDS=${ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-scale-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

require scale fio python3
fio --enghelp=nbd >/dev/null 2>&1 || { echo "scale: this fio has no nbd engine" >&2; exit 1; }

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
POOL=$BENCH_DIR/pool
SOCK=$BENCH_DIR/nbd.sock
export BALLAST_SOCKET=$POOL/control.sock
DAEMON=

cleanup() {
    if [ -n "$DAEMON" ]; then
        kill "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
    fi
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

start_daemon() {
    "$BALLAST" daemon --root "$POOL" --nbd-socket "$SOCK" --nbd-listen off \
        ${META_CACHE:+--meta-cache "$META_CACHE"} >>"$BENCH_DIR/daemon.log" 2>&1 &
    DAEMON=$!
}

stop_daemon() {
    kill -TERM "$DAEMON"
    wait "$DAEMON" || true
    DAEMON=
}

# Seconds until the control API answers.
wait_ready() {
    python3 - "$BALLAST" <<'PY'
import subprocess, sys, time
start = time.monotonic()
while subprocess.run([sys.argv[1], "pool"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
    if time.monotonic() - start > 120:
        sys.exit("the daemon did not answer within 120 s")
    time.sleep(0.01)
print(f"{time.monotonic() - start:.2f}")
PY
}

# Two ticks of the daemon's commit timer (5 s): a checkpoint lands, and
# the I/O buffers and heap a whole tick did not use are given back, so the
# reading is the memory the pool holds at rest rather than a burst's peak.
settle() { sleep 11; }

rss_mib() { echo $(($(awk '/^VmRSS/ { print $2 }' "/proc/$DAEMON/status") / 1024)); }
meta_mib() { du -sm "$POOL/meta" | cut -f1; }
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

fio_run() {
    local out=$1
    shift
    fio --output-format=json --output="$out" --ioengine=nbd --numjobs=1 "$@" >/dev/null
}

iops_of() {
    python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))["jobs"][0]; s = j["read"] if j["read"]["io_bytes"] else j["write"]; print(round(s["iops"]))' "$1"
}

start_daemon
wait_ready >/dev/null
largest=0
for s in $STEPS; do largest=$s; done
"$BALLAST" create big --size "$((largest + 1))G" >/dev/null

TABLE=$BENCH_DIR/table.txt
printf '%-34s %10s %14s %14s\n' "step" "RSS MiB" "meta MiB" "meta MiB/GiB" >"$TABLE"
written=0
for s in $STEPS; do
    echo "writing sequentially up to $s GiB..." >&2
    fio_run "$BENCH_DIR/seq-$s.json" --name=seq --rw=write --bs=1M --iodepth=8 \
        --offset="${written}G" --size="$((s - written))G" --uri="$(uri big)"
    written=$s
    "$BALLAST" pool >/dev/null # lets a commit land before the reading
    settle
    printf '%-34s %10s %14s %14.2f\n' "$s GiB written sequentially" "$(rss_mib)" "$(meta_mib)" \
        "$(python3 -c "print($(meta_mib) / $s)")" >>"$TABLE"
done

echo "random 4 KiB writes for ${RANDOM_S}s..." >&2
fio_run "$BENCH_DIR/rand.json" --name=rand --rw=randwrite --bs=4k --iodepth=32 \
    --size="${written}G" --time_based --runtime="$RANDOM_S" --uri="$(uri big)"
RAND_IOPS=$(iops_of "$BENCH_DIR/rand.json")
settle
printf '%-34s %10s %14s %14.2f\n' "+ ${RANDOM_S}s random 4k ($RAND_IOPS IOPS)" "$(rss_mib)" "$(meta_mib)" \
    "$(python3 -c "print($(meta_mib) / $written)")" >>"$TABLE"

echo "restarting the daemon..." >&2
stop_daemon
start_daemon
READY=$(wait_ready)
printf '%-34s %10s %14s %14s\n' "restart: answers in ${READY}s" "$(rss_mib)" "$(meta_mib)" "" >>"$TABLE"
settle
printf '%-34s %10s %14s %14s\n' "  restarted, at rest" "$(rss_mib)" "$(meta_mib)" "" >>"$TABLE"
"$BALLAST" delete big >/dev/null

# Snapshot depth.
echo "random reads at snapshot depths $DEPTHS..." >&2
"$BALLAST" create deep --size 1G >/dev/null
fio_run "$BENCH_DIR/fill.json" --name=fill --rw=write --bs=1M --iodepth=8 --size=1G --uri="$(uri deep)"
DEPTH_TABLE=$BENCH_DIR/depth.txt
printf '%-12s %12s %s\n' "snapshots" "kIOPS" "(runs)" >"$DEPTH_TABLE"
depth=0
for d in $DEPTHS; do
    while [ "$depth" -lt "$d" ]; do
        fio_run "$BENCH_DIR/scatter.json" --name=scatter --rw=randwrite --bs=4k --iodepth=8 \
            --size=1G --number_ios=512 --uri="$(uri deep)"
        "$BALLAST" snapshot create deep >/dev/null
        depth=$((depth + 1))
    done
    runs=()
    for r in $(seq 1 "$ROUNDS"); do
        fio_run "$BENCH_DIR/read-$d-$r.json" --name=read --rw=randread --bs=4k --iodepth=32 \
            --size=1G --time_based --runtime="$READ_S" --ramp_time=1 --uri="$(uri deep)"
        runs+=("$(iops_of "$BENCH_DIR/read-$d-$r.json")")
    done
    median=$(printf '%s\n' "${runs[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    printf '%-12s %12.1f %s\n' "$d" "$(python3 -c "print($median / 1000)")" "(${runs[*]})" >>"$DEPTH_TABLE"
done

echo
echo "ballast daemon, fio nbd engine over the unix socket, $(date -u +%F)"
cat "$TABLE"
echo
echo "4 KiB random reads, iodepth 32, ${READ_S}s, median of $ROUNDS, 1 GiB volume"
cat "$DEPTH_TABLE"
