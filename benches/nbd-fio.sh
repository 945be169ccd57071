#!/usr/bin/env bash
# fio's nbd engine against ballast's NBD server and its peers, over a unix
# socket, on a fully written 1 GiB export:
#   ballast (the real daemon: `ballast daemon`, commit timer and all),
#   nbdkit file cache=none,
#   qemu-nbd raw (--cache=none --aio=io_uring), qemu-nbd qcow2, and fio
#   io_uring O_DIRECT on the raw file as the ceiling (no NBD at all).
# Workloads: 4 KiB randread/randwrite at iodepth 32, 1 MiB sequential
# read/write at iodepth 8, and the sequential read again after the writes
# ("aged"). Prints a table with ballast's ratio to each peer.
#
# Env: BENCH_DIR (default /var/tmp/ballast-nbd-bench, must not be tmpfs),
#      RUNTIME seconds per run (default 10), SIZE (default 1G),
#      CARGO_TARGET_DIR (where ballast is built).
set -euo pipefail

RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-1G}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-nbd-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in fio nbdkit qemu-nbd qemu-img python3; do
    command -v "$tool" >/dev/null || { echo "nbd-fio: $tool is required (scripts/install-test-deps.sh)" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nbd-fio: this fio has no nbd engine" >&2; exit 1; }

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
SOCK=$BENCH_DIR/nbd.sock
RESULTS=$BENCH_DIR/results.tsv
: >"$RESULTS"
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
    rm -f "$SOCK"
}
trap stop_server EXIT

wait_for_socket() {
    local sock=${1:-$SOCK}
    for _ in $(seq 1 100); do
        [ -S "$sock" ] && return 0
        sleep 0.1
    done
    echo "nbd-fio: server did not create $sock" >&2
    exit 1
}

# fio_json NAME ARGS... -> prints "iops bw_MiBps" of the job.
fio_run() {
    local out=$BENCH_DIR/$1.json
    shift
    fio --output-format=json --output="$out" "$@" >/dev/null
    python3 - "$out" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
print(f'{side["iops"]:.0f} {side["bw"] / 1024:.1f}')
PY
}

# workloads TARGET_NAME FIO_TARGET_ARGS...
workloads() {
    local name=$1
    shift
    local common=(--time_based --runtime="$RUNTIME" --ramp_time=1 --size="$SIZE" --numjobs=1 --group_reporting)
    local r
    # Reads first, on the freshly and sequentially written volume; then the
    # writes; then the sequential read once more, on the layout the random
    # writes left behind (redirect-on-write scatters rewritten blocks, so
    # this row shows what ageing costs; it is reported, not part of the goal).
    r=$(fio_run "$name-randread" --name=randread --rw=randread --bs=4k --iodepth=32 "${common[@]}" "$@")
    printf '%s\trandread-4k\t%s\n' "$name" "$r" >>"$RESULTS"
    r=$(fio_run "$name-seqread" --name=seqread --rw=read --bs=1M --iodepth=8 "${common[@]}" "$@")
    printf '%s\tseqread-1m\t%s\n' "$name" "$r" >>"$RESULTS"
    r=$(fio_run "$name-randwrite" --name=randwrite --rw=randwrite --bs=4k --iodepth=32 "${common[@]}" "$@")
    printf '%s\trandwrite-4k\t%s\n' "$name" "$r" >>"$RESULTS"
    r=$(fio_run "$name-seqwrite" --name=seqwrite --rw=write --bs=1M --iodepth=8 "${common[@]}" "$@")
    printf '%s\tseqwrite-1m\t%s\n' "$name" "$r" >>"$RESULTS"
    r=$(fio_run "$name-seqread-aged" --name=seqread --rw=read --bs=1M --iodepth=8 "${common[@]}" "$@")
    printf '%s\tseqread-1m-aged\t%s\n' "$name" "$r" >>"$RESULTS"
    echo "  $name done" >&2
}

nbd_args() { echo "--ioengine=nbd --uri=nbd+unix:///$1?socket=$SOCK"; }

fill_nbd() {
    # shellcheck disable=SC2046
    fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" $(nbd_args "$1") >/dev/null
}

echo "ballast..." >&2
export BALLAST_SOCKET=$BENCH_DIR/pool/control.sock
"$BALLAST" daemon --root "$BENCH_DIR/pool" --nbd-socket "$SOCK" --nbd-listen off >"$BENCH_DIR/daemon.log" 2>&1 &
SERVER_PID=$!
wait_for_socket
wait_for_socket "$BALLAST_SOCKET"
"$BALLAST" create bench --size "$SIZE" >/dev/null
fill_nbd bench
# shellcheck disable=SC2046
workloads ballast $(nbd_args bench)
stop_server
rm -rf "$BENCH_DIR/pool"

RAW=$BENCH_DIR/disk.raw
fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" --ioengine=io_uring --direct=1 --filename="$RAW" >/dev/null

echo "nbdkit file cache=none..." >&2
nbdkit -f -U "$SOCK" file file="$RAW" cache=none &
SERVER_PID=$!
wait_for_socket
# shellcheck disable=SC2046
workloads nbdkit $(nbd_args "")
stop_server

echo "qemu-nbd raw..." >&2
qemu-nbd -k "$SOCK" -f raw --cache=none --aio=io_uring -t -e 8 "$RAW" &
SERVER_PID=$!
wait_for_socket
# shellcheck disable=SC2046
workloads qemu-raw $(nbd_args "")
stop_server

echo "qemu-nbd qcow2..." >&2
QCOW=$BENCH_DIR/disk.qcow2
qemu-img create -q -f qcow2 "$QCOW" "$SIZE"
qemu-nbd -k "$SOCK" -f qcow2 --cache=none --aio=io_uring -t -e 8 "$QCOW" &
SERVER_PID=$!
wait_for_socket
fill_nbd ""
# shellcheck disable=SC2046
workloads qemu-qcow2 $(nbd_args "")
stop_server
rm -f "$QCOW"

echo "fio io_uring O_DIRECT (ceiling)..." >&2
workloads ceiling --ioengine=io_uring --direct=1 --filename="$RAW"
rm -f "$RAW"

python3 - "$RESULTS" "$RUNTIME" "$SIZE" <<'PY'
import sys
rows = {}
for line in open(sys.argv[1]):
    target, load, iops, bw = line.split()
    rows.setdefault(load, {})[target] = (float(iops), float(bw))
peers = ["nbdkit", "qemu-raw", "qemu-qcow2", "ceiling"]
cols = ["ballast"] + peers
print(f"fio nbd engine, unix socket, {sys.argv[3]} fully written export, {sys.argv[2]} s per run")
print("4k: kIOPS, 1m: MiB/s; ratio = ballast / peer")
head = f"{'workload':<16}" + "".join(f"{c:>12}" for c in cols) + "".join(f"{'vs ' + p:>15}" for p in peers)
print(head)
print("-" * len(head))
for load in ["randread-4k", "randwrite-4k", "seqread-1m", "seqwrite-1m", "seqread-1m-aged"]:
    r = rows[load]
    val = lambda t: r[t][0] / 1000 if load.endswith("4k") else r[t][1]
    line = f"{load:<16}" + "".join(f"{val(c):>12.1f}" for c in cols)
    line += "".join(f"{val('ballast') / val(p):>15.2f}" if val(p) else f"{'-':>15}" for p in peers)
    print(line)
PY
