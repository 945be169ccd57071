#!/usr/bin/env bash
# Scheduled incremental backups under a steady write load, with the real
# daemon, fio's nbd engine over the unix socket and a file:// target:
#
# 1. Two SIZE volumes (default 1G), `vol` and the control `ctl`, fully
#    written (1 MiB writes), then each one's 4 KiB random-read IOPS
#    (iodepth 32, READ_S seconds): "before".
# 2. A schedule of `vol` every EVERY (default 2s, keep-last KEEP, default
#    10) while fio writes 4 KiB blocks at random at RATE (default 64k/s,
#    16 blocks a second) to both volumes, until RUNS (default 100)
#    scheduled backups of `vol` have succeeded. Each run's duration is
#    read from `ballast backup schedule list --json` as it completes.
# 3. The writes stop and the schedule is removed; the volume's snapshots
#    are counted, the store's size measured, and the random-read IOPS of
#    both volumes measured again, SAMPLES times each (default 3),
#    alternating: "after", medians.
#
# `ctl` took the same writes without backups: `vol` after / `ctl` after is
# what the backups and their snapshots cost the reads, apart from what
# the random writes themselves do to the volume's layout.
#
# Goal (issue 17): IOPS after within 10% of before; durations flat
# (first, median, last); one backup snapshot left on the volume.
#
# Env: BENCH_DIR (default /var/tmp/ballast-schedule-bench; deleted at the
# end), SIZE, EVERY, KEEP, RATE, RUNS, READ_S (default 10), SAMPLES, BALLAST (the
# binary; default a release build of this tree), CARGO_TARGET_DIR.
set -euo pipefail

SIZE=${SIZE:-1G}
EVERY=${EVERY:-2s}
KEEP=${KEEP:-10}
RATE=${RATE:-64k}
RUNS=${RUNS:-100}
READ_S=${READ_S:-10}
SAMPLES=${SAMPLES:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-schedule-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"

require schedule fio python3
fio --enghelp=nbd >/dev/null 2>&1 || { echo "schedule: this fio has no nbd engine" >&2; exit 1; }
ballast_binary

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
SOCK=$BENCH_DIR/control.sock
NBD=$BENCH_DIR/nbd.sock
DEST=file://$BENCH_DIR/store
uri() { echo "nbd+unix:///$1?socket=$NBD"; }
DAEMON_PID=
WRITER_PIDS=()
cleanup() {
    for pid in "${WRITER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

b() { "$BALLAST" --socket "$SOCK" "$@"; }

RUST_LOG=warn "$BALLAST" daemon --root "$BENCH_DIR/root" --control-socket "$SOCK" \
    --nbd-socket "$NBD" 2>"$BENCH_DIR/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do b pool >/dev/null 2>&1 && break; sleep 0.1; done
b create vol --size "$SIZE" >/dev/null
b create ctl --size "$SIZE" >/dev/null

# fio_nbd VOLUME ARGS...
fio_nbd() {
    local volume=$1
    shift
    fio --ioengine=nbd --uri="$(uri "$volume")" --numjobs=1 "$@" >/dev/null
}
randread_iops() {
    fio_nbd "$1" --name=randread --rw=randread --bs=4k --iodepth=32 --output-format=json \
        --output="$BENCH_DIR/randread.json" --time_based --runtime="$READ_S" --size="$SIZE"
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' \
        "$BENCH_DIR/randread.json"
}

echo "filling $SIZE twice..." >&2
fio_nbd vol --name=fill --rw=write --bs=1m --iodepth=8 --size="$SIZE"
fio_nbd ctl --name=fill --rw=write --bs=1m --iodepth=8 --size="$SIZE"
IOPS_BEFORE=$(randread_iops vol)
CTL_BEFORE=$(randread_iops ctl)

for volume in vol ctl; do
    fio --ioengine=nbd --uri="$(uri "$volume")" --numjobs=1 --name=load --rw=randwrite --bs=4k --iodepth=4 \
        --rate="$RATE" --time_based --runtime=86400 --size="$SIZE" >/dev/null &
    WRITER_PIDS+=($!)
done
b backup schedule set vol --dest "$DEST" --every "$EVERY" --keep-last "$KEEP" >/dev/null
START=$(date +%s)
# Poll the schedule; note each run's duration as it completes.
DURATIONS=$BENCH_DIR/durations
: >"$DURATIONS"
SEEN=0
while [ "$SEEN" -lt "$RUNS" ]; do
    sleep 0.2
    read -r SUCC DUR FAILS SKIPS < <(b backup schedule list --json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
print(s["successes"], (s["last_success"] or {}).get("duration_ms", 0), s["failures"], s["skipped"])')
    if [ "$SUCC" -gt "$SEEN" ]; then
        [ $((SUCC - SEEN)) -gt 1 ] && echo "schedule: missed $((SUCC - SEEN - 1)) durations" >&2
        echo "$DUR" >>"$DURATIONS"
        SEEN=$SUCC
        printf '\r%d/%d runs' "$SEEN" "$RUNS" >&2
    fi
done
echo >&2
ELAPSED=$(( $(date +%s) - START ))
for pid in "${WRITER_PIDS[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
WRITER_PIDS=()
b backup schedule remove vol --dest "$DEST" >/dev/null
sleep 3 # a run in flight finishes
SNAPSHOTS=$(b snapshot list vol --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
STORE=$(du -sb "$BENCH_DIR/store" | cut -f1)
BACKUPS=$(b backup list --dest "$DEST" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
VOL_AFTER=() CTL_AFTER=()
for _ in $(seq "$SAMPLES"); do
    VOL_AFTER+=("$(randread_iops vol)")
    CTL_AFTER+=("$(randread_iops ctl)")
done
IOPS_AFTER=$(median "${VOL_AFTER[@]}")
CTL_MEDIAN=$(median "${CTL_AFTER[@]}")

python3 - "$DURATIONS" <<EOF
import statistics, sys
d = [int(x) for x in open(sys.argv[1]) if x.strip()]
print(f"runs:                 {len(d)} successful of $RUNS in ${ELAPSED} s (every $EVERY, writes at $RATE/s), {int('$FAILS')} failed, {int('$SKIPS')} skipped")
print(f"backup duration:      first {d[0]} ms, median {int(statistics.median(d))} ms, last {d[-1]} ms (max {max(d)} ms)")
print(f"random read 4k qd32:  before $IOPS_BEFORE IOPS, after $IOPS_AFTER IOPS ({$IOPS_AFTER / $IOPS_BEFORE:.2f} x; median of $SAMPLES: ${VOL_AFTER[*]})")
print(f"control (no backups): before $CTL_BEFORE IOPS, after $CTL_MEDIAN IOPS ({$CTL_MEDIAN / $CTL_BEFORE:.2f} x; ${CTL_AFTER[*]}); backed-up / control after: {$IOPS_AFTER / $CTL_MEDIAN:.2f} x")
print(f"snapshots on volume:  $SNAPSHOTS")
print(f"store:                {$STORE / 2**20:.1f} MiB, $BACKUPS backups kept (keep-last $KEEP)")
EOF
