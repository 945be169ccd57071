#!/usr/bin/env bash
# Where the Docker path's time goes, layer by layer, on the host (no
# Docker): the same fio job shapes as benches/docker-path.sh on
#
#   fuse   the daemon's FUSE file DIR/disk of an attached volume, directly
#   loop   the loop device on that file (`ballast attach`), as a raw device
#   ext4   a file on ext4 on the loop device of a second attached volume
#   nbd    a third volume through the NBD export (fio's nbd engine)
#   host   a file on the host's own filesystem (the one holding BENCH_DIR)
#
# fio io_uring with O_DIRECT (nbd: fio's nbd engine) on fully written
# 1 GiB regions; each workload runs ROUNDS times over all targets in an
# order that rotates from round to round. Besides IOPS / MiB/s, every run
# records the daemon's CPU time (utime + stime from /proc/PID/stat) per
# I/O, so a layer that costs CPU rather than latency shows.
#
# Env: BENCH_DIR (default /var/tmp/ballast-attach-bench; not tmpfs),
#      RUNTIME seconds per fio run (default 6), ROUNDS (default 3),
#      TARGETS (default "fuse loop ext4 nbd host"), DAEMON_ARGS (extra
#      `ballast daemon` arguments), CARGO_TARGET_DIR.
set -euo pipefail

RUNTIME=${RUNTIME:-6}
ROUNDS=${ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-attach-bench}
read -r -a TARGETS <<<"${TARGETS:-fuse loop ext4 nbd host}"
read -r -a EXTRA <<<"${DAEMON_ARGS:-}"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

[ "$(id -u)" = 0 ] || { echo "attach-layers: run as root" >&2; exit 1; }
require attach-layers fio losetup mkfs.ext4 python3
fio --enghelp=nbd >/dev/null 2>&1 || { echo "attach-layers: this fio has no nbd engine" >&2; exit 1; }

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR/host" "$BENCH_DIR/ext4"
SOCK=$BENCH_DIR/control.sock
RESULTS=$BENCH_DIR/results.tsv
: >"$RESULTS"
DAEMON_PID=
b() { "$BALLAST" --socket "$SOCK" "$@"; }

cleanup() {
    set +e
    mountpoint -q "$BENCH_DIR/ext4" && umount "$BENCH_DIR/ext4"
    if [ -n "$DAEMON_PID" ]; then
        b detach raw >/dev/null 2>&1
        b detach fs >/dev/null 2>&1
        kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null
    fi
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

"$BALLAST" daemon --root "$BENCH_DIR/root" --control-socket "$SOCK" "${EXTRA[@]}" \
    >"$BENCH_DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 300); do [ -S "$SOCK" ] && b pool >/dev/null 2>&1 && break; sleep 0.1; done
for vol in raw fs nbdvol; do b create "$vol" --size 4G >/dev/null; done
LOOP=$(b attach raw)
FSDEV=$(b attach fs)
FUSE_FILE=$(cat "/sys/block/${LOOP#/dev/}/loop/backing_file")
mkfs.ext4 -q -F "$FSDEV"
mount "$FSDEV" "$BENCH_DIR/ext4"
NBD_URI="nbd+unix:///nbdvol?socket=$BENCH_DIR/root/nbd.sock"
echo "loop $LOOP on $FUSE_FILE; ext4 on $FSDEV" >&2
echo "load at start: $(uptime)" >&2

file_of() { # target -> fio target arguments
    case $1 in
        fuse) echo "--filename=$FUSE_FILE --ioengine=io_uring --direct=1" ;;
        loop) echo "--filename=$LOOP --ioengine=io_uring --direct=1" ;;
        ext4) echo "--filename=$BENCH_DIR/ext4/fio.dat --ioengine=io_uring --direct=1" ;;
        host) echo "--filename=$BENCH_DIR/host/fio.dat --ioengine=io_uring --direct=1" ;;
        nbd) echo "--ioengine=nbd --uri=$NBD_URI" ;;
    esac
}

echo "writing the 1 GiB regions..." >&2
# fuse and loop share the volume `raw`: one fill serves both.
for t in loop ext4 nbd host; do
    # shellcheck disable=SC2046
    fio --name=fill $(file_of "$t") --size=1G --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
done
sync

WORKLOADS=("randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8" "fsync 4k 1")

fio_args() { # workload -> fio arguments
    set -- $1
    case $1 in
        fsync) echo "--rw=write --bs=$2 --iodepth=$3 --fsync=1" ;;
        *) echo "--rw=$1 --bs=$2 --iodepth=$3" ;;
    esac
}

cpu_ticks() { # the daemon's utime + stime, in clock ticks
    awk '{print $14 + $15}' "/proc/$DAEMON_PID/stat"
}

for round in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            t=${TARGETS[$(( (i + round) % n ))]}
            out=$BENCH_DIR/fio.json
            before=$(cpu_ticks)
            # shellcheck disable=SC2046
            fio --name=b $(file_of "$t") --size=1G --time_based --runtime="$RUNTIME" \
                --output-format=json $(fio_args "$w") >"$out" 2>/dev/null
            after=$(cpu_ticks)
            python3 - "$out" "$round" "$t" "$w" "$((after - before))" "$(getconf CLK_TCK)" >>"$RESULTS" <<'PY'
import json, sys
path, rnd, target, workload, ticks, hz = sys.argv[1:]
text = open(path).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
kind = "read" if "read" in workload else "write"
d = job[kind]
ios = d["total_ios"] or 1
us_per_io = int(ticks) / int(hz) * 1e6 / ios
print(f"{rnd}\t{target}\t{workload}\t{d['iops']:.1f}\t{d['bw'] / 1024:.1f}\t{us_per_io:.1f}")
PY
            tail -1 "$RESULTS" >&2
        done
    done
done
echo "load at end: $(uptime)" >&2

python3 - "$RESULTS" "$ROUNDS" "$RUNTIME" "${TARGETS[@]}" <<'PY'
import statistics, sys
from collections import defaultdict
path, rounds, runtime, *targets = sys.argv[1:]
val = defaultdict(lambda: defaultdict(dict))
cpu = defaultdict(lambda: defaultdict(list))
for line in open(path):
    rnd, target, workload, iops, mibs, us = line.rstrip("\n").split("\t")
    v = float(iops) if "4k" in workload else float(mibs)
    val[workload][target][rnd] = v
    cpu[workload][target].append(float(us))
names = {
    "randread 4k 32": "4 KiB random read, qd32 (IOPS)",
    "randwrite 4k 32": "4 KiB random write, qd32 (IOPS)",
    "read 1M 8": "1 MiB read, qd8 (MiB/s)",
    "write 1M 8": "1 MiB write, qd8 (MiB/s)",
    "fsync 4k 1": "4 KiB write + fsync, qd1 (IOPS)",
}
fmt = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"
print(f"fio io_uring O_DIRECT (nbd: fio's nbd engine), {runtime} s runs, {rounds} rotating rounds; "
      "medians; in brackets the daemon's CPU per I/O (us, median)")
print()
print("| workload | " + " | ".join(targets) + " | " +
      " | ".join(f"{t} / host" for t in targets if t != "host") + " |")
print("|---|" + "---|" * (len(targets) + len([t for t in targets if t != "host"])))
for w, name in names.items():
    row = val[w]
    cells = []
    for t in targets:
        if t not in row:
            cells.append("-")
            continue
        med = statistics.median(row[t].values())
        us = statistics.median(cpu[w][t])
        cells.append(f"{fmt(med)} ({us:.0f})" if t != "host" else fmt(med))
    ratios = []
    for t in targets:
        if t == "host":
            continue
        rs = [row[t][r] / row["host"][r] for r in row.get(t, {}) if row.get("host", {}).get(r)]
        ratios.append(f"{statistics.median(rs):.2f}" if rs else "-")
    print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
PY
