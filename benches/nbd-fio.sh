#!/usr/bin/env bash
# fio's nbd engine against ballast's NBD server and its peers, over unix
# sockets, each on its own fully written 1 GiB export:
#   ballast (the real daemon: `ballast daemon`, commit timer and all),
#   nbdkit file cache=none,
#   qemu-nbd raw (--cache=none --aio=io_uring), qemu-nbd qcow2, and fio
#   io_uring O_DIRECT on a raw file as the ceiling (no NBD at all);
# and over TLS 1.3 (NBD_OPT_STARTTLS, X.509): a second ballast daemon with
#   --tls require, and nbdkit file cache=none with --tls=require.
# Workloads: 4 KiB randread/randwrite at iodepth 32, 4 KiB random writes
# each followed by a flush at iodepth 1 (`--fsync=1`: a database commit;
# the ceiling's is an fdatasync of its file), 1 MiB sequential read/write
# at iodepth 8, and the sequential read again after the writes ("aged").
#
# The disk's speed drifts by a factor of two within minutes on a shared
# machine, so every server runs at once and each workload is run ROUNDS
# times over all targets, in an order that rotates from round to round.
# The table shows each target's median and ballast's median ratio to each
# peer over the rounds (a ratio compares two runs a few seconds apart).
#
# Uncached peers: `nbdkit file cache=none` reads through the page cache and
# drops each range after use, but on recent kernels most pages survive the
# drop (large folios straddle the dropped range), so after a few passes its
# "uncached" reads come from memory. It therefore runs in a memory cgroup
# that holds PEER_CACHE of page cache, which still leaves room for the
# kernel's read-ahead and write-back. The table reports how much of its
# file was resident after its sequential reads.
#
# TLS: fio's nbd engine takes a libnbd URI, and libnbd refuses the URI
# parameters that name files (tls-psk-file=, tls-certificates=) unless the
# program allows them, which fio does not. libnbd still looks for
# certificates in $HOME/.pki/libnbd/, except for root (/etc/pki/libnbd/,
# which a benchmark must not touch), so the TLS runs' fio runs as `nobody`
# with a HOME of the script's making, holding the CA that signed both
# servers' certificate; the servers' sockets let `nobody` connect. Both
# servers keep their TLS library's default cipher suite choice; the table
# notes which suite each negotiated.
#
# Env: BENCH_DIR (default /var/tmp/ballast-nbd-bench, must not be tmpfs;
#      needs about 9 GiB free, removed at the end but for results and logs),
#      RUNTIME seconds per run (default 5), ROUNDS (default 3),
#      SIZE (default 1G), PEER_CACHE (default 64M), BALLAST_THREADS (the
#      daemon's --threads; default: the daemon's own default),
#      CARGO_TARGET_DIR (where ballast is built), BALLAST_BASE (another
#      ballast binary, e.g. the last release: run as one more target,
#      "ballast-base", to compare a change with what it changes, same run).
set -euo pipefail

RUNTIME=${RUNTIME:-5}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1G}
PEER_CACHE=${PEER_CACHE:-64M}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-nbd-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

require nbd-fio fio nbdkit nbdinfo qemu-nbd qemu-img python3 fincore numfmt openssl setpriv
fio --enghelp=nbd >/dev/null 2>&1 || { echo "nbd-fio: this fio has no nbd engine" >&2; exit 1; }

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
RESULTS=$BENCH_DIR/results.tsv
: >"$RESULTS"
PIDS=()
CGROUP=

cleanup() {
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$CGROUP" ]; then
        rmdir "$CGROUP" 2>/dev/null || true
    fi
    # The exports take several GiB; the results and logs stay.
    rm -rf "$BENCH_DIR"/*-pool "$BENCH_DIR"/*.raw "$BENCH_DIR"/*.qcow2
}
trap cleanup EXIT

wait_for_socket() {
    for _ in $(seq 1 100); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    echo "nbd-fio: no server at $1" >&2
    exit 1
}

# A memory cgroup whose page cache is bounded to PEER_CACHE (cgroup v2 at
# the root of the unified hierarchy, or v1 under this shell's own memory
# cgroup); prints its directory, or nothing where neither can be made.
bounded_cgroup() {
    local bytes dir
    bytes=$(numfmt --from=iec "$PEER_CACHE")
    if [ -f /sys/fs/cgroup/cgroup.subtree_control ]; then
        grep -qw memory /sys/fs/cgroup/cgroup.subtree_control || return 0
        dir=/sys/fs/cgroup/ballast-nbd-bench-$$
        mkdir "$dir" 2>/dev/null && echo "$bytes" >"$dir/memory.max" 2>/dev/null || return 0
    elif [ -d /sys/fs/cgroup/memory ]; then
        dir=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)/ballast-nbd-bench-$$
        mkdir "$dir" 2>/dev/null && echo "$bytes" >"$dir/memory.limit_in_bytes" 2>/dev/null || return 0
    else
        return 0
    fi
    echo "$dir"
}

# Evicts FILE from the page cache (a whole-file drop, which does work).
drop_cache() {
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

fill_raw() {
    fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" --ioengine=io_uring --direct=1 --filename="$1" >/dev/null
}

fill_nbd() {
    fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" --ioengine=nbd --uri="$1" >/dev/null
}

# COMMAND as nobody, with the HOME that holds the TLS runs' CA.
as_nobody() {
    setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$BENCH_DIR/tls-home" "$@"
}

uri() { echo "nbd+unix:///$1?socket=$BENCH_DIR/$2.sock"; }
tls_uri() { echo "nbds+unix:///$1?socket=$BENCH_DIR/$2.sock"; }

# A CA and a server certificate for both TLS servers, laid out as nbdkit's
# --tls-certificates wants; the CA in the TLS runs' HOME for libnbd.
make_certificates() {
    local pki=$BENCH_DIR/pki home=$BENCH_DIR/tls-home
    mkdir -p "$pki" "$home/.pki/libnbd"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=nbd-fio bench CA" -keyout "$pki/ca-key.pem" -out "$pki/ca-cert.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$pki/server-key.pem" -out "$pki/server.csr" 2>/dev/null
    openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca-cert.pem" -CAkey "$pki/ca-key.pem" \
        -CAcreateserial -days 2 -out "$pki/server-cert.pem" \
        -extfile <(printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n') 2>/dev/null
    cp "$pki/ca-cert.pem" "$home/.pki/libnbd/ca-cert.pem"
    chmod 0755 "$BENCH_DIR" "$home" "$home/.pki" "$home/.pki/libnbd"
    chmod 0644 "$home/.pki/libnbd/ca-cert.pem"
}

# start_ballast NAME BINARY ARGS...: a daemon with its own pool, serving
# NBD on $BENCH_DIR/NAME.sock; prints its control socket.
start_ballast() {
    local name=$1 bin=$2
    shift 2
    "$bin" daemon --root "$BENCH_DIR/$name-pool" --control-socket "$BENCH_DIR/$name-control.sock" \
        --nbd-socket "$BENCH_DIR/$name.sock" "$@" \
        ${BALLAST_THREADS:+--threads "$BALLAST_THREADS"} >"$BENCH_DIR/$name.log" 2>&1 &
    PIDS+=($!)
    wait_for_socket "$BENCH_DIR/$name.sock"
    wait_for_socket "$BENCH_DIR/$name-control.sock"
    "$bin" --socket "$BENCH_DIR/$name-control.sock" create bench --size "$SIZE" >/dev/null
}

echo "starting ballast (plain and TLS), nbdkit (plain and TLS), qemu-nbd raw and qcow2..." >&2
make_certificates
start_ballast ballast "$BALLAST"
fill_nbd "$(uri bench ballast)"
start_ballast ballast-tls "$BALLAST" --tls require \
    --tls-cert "$BENCH_DIR/pki/server-cert.pem" --tls-key "$BENCH_DIR/pki/server-key.pem" \
    --nbd-group nogroup
as_nobody fio --name=fill --rw=write --bs=1M --iodepth=8 --size="$SIZE" --ioengine=nbd \
    --uri="$(tls_uri bench ballast-tls)" >/dev/null
if [ -n "${BALLAST_BASE:-}" ]; then
    start_ballast ballast-base "$BALLAST_BASE"
    fill_nbd "$(uri bench ballast-base)"
fi

NBDKIT_RAW=$BENCH_DIR/nbdkit.raw
fill_raw "$NBDKIT_RAW"
drop_cache "$NBDKIT_RAW"
CGROUP=$(bounded_cgroup)
IN_CGROUP=()
if [ -n "$CGROUP" ]; then
    # A shell that joins the cgroup, then becomes nbdkit.
    IN_CGROUP=(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CGROUP")
else
    echo "nbd-fio: cannot make a memory cgroup; nbdkit's page cache is unbounded" >&2
fi
"${IN_CGROUP[@]}" nbdkit -f -U "$BENCH_DIR/nbdkit.sock" file file="$NBDKIT_RAW" cache=none &
PIDS+=($!)
wait_for_socket "$BENCH_DIR/nbdkit.sock"

NBDKIT_TLS_RAW=$BENCH_DIR/nbdkit-tls.raw
fill_raw "$NBDKIT_TLS_RAW"
drop_cache "$NBDKIT_TLS_RAW"
"${IN_CGROUP[@]}" nbdkit -f --tls=require --tls-certificates="$BENCH_DIR/pki" \
    -U "$BENCH_DIR/nbdkit-tls.sock" file file="$NBDKIT_TLS_RAW" cache=none &
PIDS+=($!)
wait_for_socket "$BENCH_DIR/nbdkit-tls.sock"
chmod 0666 "$BENCH_DIR/nbdkit-tls.sock"

# The cipher suite each TLS server settles on with libnbd, from libnbd's
# own report of the connection.
tls_suite() {
    as_nobody env LIBNBD_DEBUG=1 nbdinfo --size "$1" 2>&1 | grep -o 'using TLS: cipher [^ ]*' | head -1 | cut -d' ' -f4
}
BALLAST_SUITE=$(tls_suite "$(tls_uri bench ballast-tls)")
NBDKIT_SUITE=$(tls_suite "$(tls_uri "" nbdkit-tls)")

QEMU_RAW=$BENCH_DIR/qemu.raw
fill_raw "$QEMU_RAW"
qemu-nbd -k "$BENCH_DIR/qemu-raw.sock" -f raw --cache=none --aio=io_uring -t -e 8 "$QEMU_RAW" &
PIDS+=($!)
wait_for_socket "$BENCH_DIR/qemu-raw.sock"

QCOW=$BENCH_DIR/qemu.qcow2
qemu-img create -q -f qcow2 "$QCOW" "$SIZE"
qemu-nbd -k "$BENCH_DIR/qemu-qcow2.sock" -f qcow2 --cache=none --aio=io_uring -t -e 8 "$QCOW" &
PIDS+=($!)
wait_for_socket "$BENCH_DIR/qemu-qcow2.sock"
fill_nbd "$(uri "" qemu-qcow2)"

CEILING_RAW=$BENCH_DIR/ceiling.raw
fill_raw "$CEILING_RAW"

TARGETS=(ballast nbdkit qemu-raw qemu-qcow2 ceiling ballast-tls nbdkit-tls)
if [ -n "${BALLAST_BASE:-}" ]; then
    TARGETS+=(ballast-base)
fi

target_args() {
    case $1 in
        ballast | ballast-base) echo "--ioengine=nbd --uri=$(uri bench "$1")" ;;
        ballast-tls) echo "--ioengine=nbd --uri=$(tls_uri bench ballast-tls)" ;;
        nbdkit-tls) echo "--ioengine=nbd --uri=$(tls_uri "" nbdkit-tls)" ;;
        ceiling) echo "--ioengine=io_uring --direct=1 --filename=$CEILING_RAW" ;;
        *) echo "--ioengine=nbd --uri=$(uri "" "$1")" ;;
    esac
}

# run TARGET LOAD ROUND FIO_ARGS... -> appends "target load round iops MiB/s".
run() {
    local target=$1 load=$2 round=$3 out
    shift 3
    out=$BENCH_DIR/$target-$load-$round.json
    local as=()
    case $target in *-tls) as=(as_nobody) ;; esac
    # shellcheck disable=SC2046
    "${as[@]+"${as[@]}"}" fio --output-format=json --time_based --runtime="$RUNTIME" \
        --ramp_time=1 --size="$SIZE" --numjobs=1 "$@" $(target_args "$target") >"$out"
    python3 - "$out" "$target" "$load" "$round" >>"$RESULTS" <<'PY'
import json, sys
# fio's nbd engine prints a line of its own to stdout before the JSON.
text = open(sys.argv[1]).read()
job = json.loads(text[text.find("{"):])["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
print(f'{sys.argv[2]}\t{sys.argv[3]}\t{sys.argv[4]}\t{side["iops"]:.0f}\t{side["bw"] / 1024:.1f}')
PY
}

# workload LOAD FIO_ARGS...: ROUNDS rounds over every target.
workload() {
    local load=$1 round i n=${#TARGETS[@]}
    shift
    for round in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            run "${TARGETS[$(((i + round - 1) % n))]}" "$load" "$round" "$@"
        done
    done
    echo "  $load done" >&2
}

# Reads first, on the freshly and sequentially written exports; then the
# writes; then the sequential read once more ("aged": after the random
# writes and the sequential write that follows them; it is reported, not
# part of the goal).
echo "running $ROUNDS rounds of ${RUNTIME}s per workload and target..." >&2
workload randread-4k --name=randread --rw=randread --bs=4k --iodepth=32
workload seqread-1m --name=seqread --rw=read --bs=1M --iodepth=8
RESIDENT=$(fincore --bytes --noheadings --output RES "$NBDKIT_RAW")
workload randwrite-4k --name=randwrite --rw=randwrite --bs=4k --iodepth=32
workload fsync-4k --name=fsync --rw=randwrite --bs=4k --iodepth=1 --fsync=1
workload seqwrite-1m --name=seqwrite --rw=write --bs=1M --iodepth=8
workload seqread-1m-aged --name=seqread --rw=read --bs=1M --iodepth=8

if [ -n "$CGROUP" ]; then
    CACHE_NOTE="nbdkit's page cache bounded to $PEER_CACHE"
else
    CACHE_NOTE="nbdkit's page cache unbounded"
fi
TLS_NOTE="TLS 1.3 with X.509; ballast negotiated ${BALLAST_SUITE:-?}, nbdkit ${NBDKIT_SUITE:-?}"
python3 - "$RESULTS" "$RUNTIME" "$SIZE" "$ROUNDS" "$CACHE_NOTE" "$RESIDENT" "$TLS_NOTE" <<'PY'
import statistics, sys
results, runtime, size, rounds, cache_note, resident, tls_note = sys.argv[1:]
runs = {}
for line in open(results):
    target, load, rnd, iops, bw = line.split()
    value = float(iops) / 1000 if load.endswith("4k") else float(bw)
    runs.setdefault(load, {}).setdefault(target, {})[rnd] = value
peers = ["nbdkit", "qemu-raw", "qemu-qcow2", "ceiling"]
if "ballast-base" in runs["randread-4k"]:
    peers.append("ballast-base")
cols = ["ballast"] + peers
print(f"fio nbd engine, unix socket, {size} fully written exports, "
      f"{runtime} s per run, median of {rounds} rounds")
print(f"4k: kIOPS, 1m: MiB/s; ratio = median over rounds of ballast / peer")
head = f"{'workload':<16}" + "".join(f"{c:>13}" for c in cols) + "".join(f"{'vs ' + p:>16}" for p in peers)
print(head)
print("-" * len(head))
for load in ["randread-4k", "randwrite-4k", "fsync-4k", "seqread-1m", "seqwrite-1m", "seqread-1m-aged"]:
    r = runs[load]
    line = f"{load:<16}" + "".join(f"{statistics.median(r[c].values()):>13.1f}" for c in cols)
    for p in peers:
        ratios = [r["ballast"][k] / r[p][k] for k in r[p] if r[p][k]]
        line += f"{statistics.median(ratios):>16.2f}" if ratios else f"{'-':>16}"
    print(line)
print(f"{cache_note}; {int(resident) >> 20} MiB of its {size} file resident after its sequential reads")

def ratio(r, a, b):
    ratios = [r[a][k] / r[b][k] for k in r[b] if r[b][k] and k in r[a]]
    return f"{statistics.median(ratios):>16.2f}" if ratios else f"{'-':>16}"

print()
print(f"over TLS: {tls_note}")
cols = ["ballast", "ballast-tls", "nbdkit-tls"]
head = f"{'workload':<16}" + "".join(f"{c:>13}" for c in cols) + f"{'tls vs nbdkit':>16}{'tls / plain':>16}"
print(head)
print("-" * len(head))
for load in ["randread-4k", "randwrite-4k", "fsync-4k", "seqread-1m", "seqwrite-1m", "seqread-1m-aged"]:
    r = runs[load]
    line = f"{load:<16}" + "".join(f"{statistics.median(r[c].values()):>13.1f}" for c in cols)
    line += ratio(r, "ballast-tls", "nbdkit-tls") + ratio(r, "ballast-tls", "ballast")
    print(line)
PY
