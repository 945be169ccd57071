#!/usr/bin/env bash
# Standby volumes with the real daemon: two daemons on two roots (the
# source's host and the standby's) sharing a file:// store (or moto S3
# with TARGET=s3), a SIZE_GIB volume (default 1) of incompressible data:
#   initial_s     seconds for the standby's first apply (every chunk)
#   apply_ms      the apply of an incremental backup with CHANGE_PCT % of
#                 the chunks changed (default 1), as the standby reports it
#                 (last_apply.duration_ms), and the chunks it fetched
#   follow_s      seconds from that backup's creation returning until the
#                 standby has applied it (with up to one poll interval, 1 s)
#   activate_ms   `ballast standby activate` of an idle standby
#   mid_ms        `ballast standby activate` mid-apply (the daemon restarted
#                 with BALLAST_STANDBY_DELAY_MS=500 so an apply lasts), and
#                 the volume checked to hold the previous backup (sha256)
#   late_ms       the same late in a long apply: LATE_PCT % of the chunks
#                 changed (default 50), fetches slowed to 10 ms (4 at a
#                 time: about 400 chunks a second), activation LATE_S
#                 seconds (default 1) after the apply started; with the
#                 undo's own time from the daemon's log
#
# Env: SIZE_GIB, CHANGE_PCT, LATE_PCT, LATE_S, TARGET (file or s3), BENCH_DIR (default
# /var/tmp/ballast-standby-bench), BALLAST (a ballast binary; default:
# built with --release), BALLAST_TEST_VENV (moto_server's venv). The disk
# needs about 4x SIZE_GIB.
set -euo pipefail

SIZE_GIB=${SIZE_GIB:-1}
CHANGE_PCT=${CHANGE_PCT:-1}
LATE_PCT=${LATE_PCT:-50}
LATE_S=${LATE_S:-1}
TARGET=${TARGET:-file}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-standby-bench}
VENV=${BALLAST_TEST_VENV:-/opt/ballast-test/venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"

require standby qemu-io nbdcopy python3 curl
ballast_binary

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
SRC_PID= SB_PID= MOTO=

cleanup() {
    for pid in $SRC_PID $SB_PID $MOTO; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

src() { "$BALLAST" --socket "$BENCH_DIR/a/control.sock" "$@"; }
sb() { "$BALLAST" --socket "$BENCH_DIR/b/control.sock" "$@"; }
uri() { echo "nbd+unix:///$2?socket=$BENCH_DIR/$1.nbd"; }
field() { sb standby list --json | python3 -c "import json,sys; s=[x for x in json.load(sys.stdin) if x['volume']=='sb']; print(eval(sys.argv[1], {'s': s[0] if s else None}))" "$1"; }

start() { # start NAME [ENV=VALUE...]
    local name=$1
    shift
    env "$@" "$BALLAST" daemon --root "$BENCH_DIR/$name" --control-socket "$BENCH_DIR/$name/control.sock" \
        --nbd-socket "$BENCH_DIR/$name.nbd" --nbd-listen off >>"$BENCH_DIR/$name.log" 2>&1 &
    local pid=$!
    until "$BALLAST" --socket "$BENCH_DIR/$name/control.sock" pool >/dev/null 2>&1; do sleep 0.05; done
    echo "$pid"
}
stop() { kill "$1"; while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }  # not our child: poll

case $TARGET in
file) DEST="file://$BENCH_DIR/store" ;;
s3)
    start_moto
    DEST="s3://bench/s?endpoint=http://127.0.0.1:$PORT"
    ;;
*) echo "standby: TARGET is file or s3" >&2; exit 1 ;;
esac

SRC_PID=$(start a)
SB_PID=$(start b)
CHUNKS=$((SIZE_GIB * 1024))
src create src --size "${SIZE_GIB}G" >/dev/null
head -c "$((SIZE_GIB << 30))" /dev/urandom >"$BENCH_DIR/data.img"
nbdcopy --flush "$BENCH_DIR/data.img" "$(uri a src)"
rm -f "$BENCH_DIR/data.img"
backup() { src backup create src --dest "$DEST" | sed 's/.*backup=\([^&]*\).*/\1/'; }
change() { # rewrite PCT % of the chunks (default CHANGE_PCT), spread over the volume
    local n=$((CHUNKS * ${1:-$CHANGE_PCT} / 100)) args=() i
    [ "$n" -ge 1 ] || n=1
    for ((i = 0; i < n; i++)); do args+=(-c "write -P $((RANDOM % 250 + 1)) $((i * CHUNKS / n))M 1M"); done
    qemu-io -f raw "${args[@]}" -c flush "$(uri a src)" >/dev/null
}
wait_applied() { until [ "$(field "s and s['applied_backup']")" = "$1" ]; do sleep 0.05; done; }

B1=$(backup)
T=$(now)
sb standby create sb --dest "$DEST" --volume src --every 1s >/dev/null
wait_applied "$B1"
echo "initial_s=$(since "$T") chunks=$CHUNKS target=$TARGET"

change
B2=$(backup)
T=$(now)
wait_applied "$B2"
echo "follow_s=$(since "$T") apply_ms=$(field "s['last_apply']['duration_ms']") fetched=$(field "s['last_apply']['chunks_fetched']") change_pct=$CHANGE_PCT"
SUM2=$(nbdcopy "$(uri b sb)" - | sha256sum)

# Mid-apply: slow fetches, a new backup, activation once it is applying.
stop "$SB_PID"
SB_PID=$(start b BALLAST_STANDBY_DELAY_MS=500)
change
B3=$(backup)
until [ "$(field "s and s['applying_backup']")" = "$B3" ]; do sleep 0.02; done
T=$(now)
sb standby activate sb >/dev/null
MID=$(since "$T")
[ "$(nbdcopy "$(uri b sb)" - | sha256sum)" = "$SUM2" ] || { echo "standby: activated mid-apply, the volume is not the previous backup" >&2; exit 1; }
echo "mid_ms=$(python3 -c "print(round($MID * 1000))") (holds $B2)"

# Idle: a second standby, applied, then activated.
stop "$SB_PID"
SB_PID=$(start b)
sb delete sb >/dev/null
sb standby create sb --dest "$DEST" --volume src --every 1s >/dev/null
wait_applied "$B3"
T=$(now)
sb standby activate sb >/dev/null
echo "activate_ms=$(python3 -c "print(round($(since "$T") * 1000))")"
SUM3=$(nbdcopy "$(uri b sb)" - | sha256sum)

# Late in a long apply: a third standby holding B3, then LATE_PCT % of
# the chunks changed, activation LATE_S seconds into their apply.
stop "$SB_PID"
SB_PID=$(start b BALLAST_STANDBY_DELAY_MS=10)
sb delete sb >/dev/null
sb standby create sb --dest "$DEST" --volume src --every 1s >/dev/null
wait_applied "$B3"
change "$LATE_PCT"
B4=$(backup)
until [ "$(field "s and s['applying_backup']")" = "$B4" ]; do sleep 0.02; done
sleep "$LATE_S"
T=$(now)
sb standby activate sb >/dev/null
LATE=$(since "$T")
[ "$(nbdcopy "$(uri b sb)" - | sha256sum)" = "$SUM3" ] || { echo "standby: activated late in an apply, the volume is not the previous backup" >&2; exit 1; }
UNDO=$(grep "undid an unfinished apply" "$BENCH_DIR/b.log" | tail -1 | sed -n 's/.*\(ms=[0-9]*\|chunks=[0-9]*\).*/\1/p')
echo "late_ms=$(python3 -c "print(round($LATE * 1000))") after ${LATE_S}s of an apply of $((CHUNKS * LATE_PCT / 100)) chunks (undo: ${UNDO:-?}, holds $B3)"
