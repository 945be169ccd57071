#!/usr/bin/env bash
# What a database commit costs the filesystem under the pool: 4 KiB
# write + fsync at iodepth 1 (fio's nbd engine, `--fsync=1`) through the
# real daemon, against qemu-nbd on a raw file, both on a fresh ext4 of
# their own (a loop device over a file in BENCH_DIR), counting the ext4
# journal commits (jbd2 transactions) the writes cause. A write + fsync
# that needs no journal commit costs the device one flush; one that does
# costs a journal write and more flushes. Counts, unlike timings, do not
# depend on how busy the disk is.
#
# The volume is written full first (1 MiB writes), then overwritten by
# RANDOM_IOS scattered 4 KiB writes, as a database's file would be; then
# IOS write + fsync pairs are counted. Env: BENCH_DIR (default
# /var/tmp/ballast-flush-bench), IOS (default 2000), RANDOM_IOS (default
# 20000), CARGO_TARGET_DIR. Needs root (mount).
set -euo pipefail

IOS=${IOS:-2000}
RANDOM_IOS=${RANDOM_IOS:-20000}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-flush-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

require commit-flushes fio qemu-nbd mkfs.ext4 python3

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

MNT=$BENCH_DIR/mnt
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    mountpoint -q "$MNT" && umount "$MNT"
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

rm -rf "$BENCH_DIR"
mkdir -p "$MNT"
truncate -s 3G "$BENCH_DIR/fs.img"
mkfs.ext4 -q -F "$BENCH_DIR/fs.img"
mount -o loop "$BENCH_DIR/fs.img" "$MNT"
LOOP=$(basename "$(findmnt -n -o SOURCE "$MNT")")
JBD=/proc/fs/jbd2/$LOOP-8/info
[ -r "$JBD" ] || { echo "commit-flushes: no jbd2 statistics at $JBD" >&2; exit 1; }

transactions() { awk 'NR == 1 { print $1 }' "$JBD"; }

# count URI -> transactions during IOS write + fsync pairs, and the IOPS.
count() {
    local before after out=$BENCH_DIR/fsync.json
    before=$(transactions)
    fio --ioengine=nbd --uri="$1" --name=fsync --rw=randwrite --bs=4k --iodepth=1 --fsync=1 \
        --size=1G --number_ios="$IOS" --output-format=json >"$out" 2>/dev/null
    after=$(transactions)
    python3 - "$out" "$((after - before))" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
job = json.loads(text[text.find("{"):])["jobs"][0]
print(f'{sys.argv[2]} {job["write"]["iops"]:.0f}')
PY
}

prepare() {
    fio --ioengine=nbd --uri="$1" --name=fill --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null 2>&1
    fio --ioengine=nbd --uri="$1" --name=age --rw=randwrite --bs=4k --iodepth=32 --size=1G \
        --number_ios="$RANDOM_IOS" >/dev/null 2>&1
    sleep 6 # a commit-timer tick: the overwritten blocks are free again
}

export BALLAST_SOCKET=$MNT/pool/control.sock
"$BALLAST" daemon --root "$MNT/pool" --nbd-socket "$MNT/nbd.sock" --nbd-listen off >"$BENCH_DIR/daemon.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do "$BALLAST" pool >/dev/null 2>&1 && break; sleep 0.1; done
"$BALLAST" create bench --size 1G >/dev/null
BALLAST_URI="nbd+unix:///bench?socket=$MNT/nbd.sock"
prepare "$BALLAST_URI"
read -r B_TX B_IOPS < <(count "$BALLAST_URI")

qemu-img create -q -f raw "$MNT/qemu.raw" 1G
qemu-nbd -k "$MNT/qemu.sock" -f raw --cache=none --aio=io_uring -t -e 8 "$MNT/qemu.raw" &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$MNT/qemu.sock" ] && break; sleep 0.1; done
QEMU_URI="nbd+unix:///?socket=$MNT/qemu.sock"
prepare "$QEMU_URI"
read -r Q_TX Q_IOPS < <(count "$QEMU_URI")

echo
echo "4 KiB write + fsync at iodepth 1, $IOS of them, own ext4 on $LOOP, $(date -u +%F)"
printf '%-34s %14s %16s %8s\n' "target" "jbd2 commits" "commits per op" "IOPS"
printf '%-34s %14s %16.3f %8s\n' "ballast" "$B_TX" "$(python3 -c "print($B_TX / $IOS)")" "$B_IOPS"
printf '%-34s %14s %16.3f %8s\n' "qemu-nbd raw (cache=none)" "$Q_TX" "$(python3 -c "print($Q_TX / $IOS)")" "$Q_IOPS"
