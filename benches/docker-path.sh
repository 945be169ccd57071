#!/usr/bin/env bash
# What a container feels: fio inside a container on a ballast Docker volume
# against a directory of the host's own filesystem, the same rows through
# the NBD export directly (fio's nbd engine, no attachment), and
# PostgreSQL's pgbench with its data directory on the volume against the
# host directory.
#
#   ballast    a ballast Docker volume (ext4 on a loop device on the
#              daemon's FUSE file), mounted in the container at /vol
#   host       a directory of the filesystem holding BENCH_DIR (and the
#              pool), bind-mounted in the same container at /host
#   nbd        a volume of the same daemon through its NBD unix socket
#
# Workloads: 4 KiB random read and write at iodepth 32, 1 MiB sequential
# read and write at iodepth 8, 4 KiB write + fsync at iodepth 1 (a
# database commit); fio io_uring with O_DIRECT on a fully written 1 GiB
# file. The disk's speed drifts by a factor of two within minutes, so each
# workload runs ROUNDS times over all targets in an order that rotates
# from round to round; the table shows medians and the median of the
# per-round ratios (ballast / host).
#
# The container: a `docker import` of a rootfs holding static busybox and
# this host's fio with the shared libraries it links (ldd), run with
# --security-opt seccomp=unconfined because Docker's default seccomp
# profile refuses io_uring_setup. Both targets are in the one container.
#
# pgbench (scale PG_SCALE, PG_CLIENTS clients, PG_TIME s, after a fresh
# initdb and `pgbench -i` each time): the server is this host's PostgreSQL,
# run with its data directory inside the ballast volume's mountpoint (the
# directory Docker bind-mounts into containers, bind-mounted the same way
# for the postgres user: the same filesystem, loop device and FUSE file a
# containerised server would write to) while a container holds the volume,
# and then inside the host directory.
#
# Env: BENCH_DIR (default /var/tmp/ballast-docker-bench; not tmpfs),
#      RUNTIME seconds per fio run (default 8), ROUNDS (default 3),
#      PG_ROUNDS (default 2), PG_SCALE (20), PG_CLIENTS (4), PG_TIME (30),
#      SKIP_PGBENCH=1, CARGO_TARGET_DIR.
set -euo pipefail

RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-3}
PG_ROUNDS=${PG_ROUNDS:-2}
PG_SCALE=${PG_SCALE:-20}
PG_CLIENTS=${PG_CLIENTS:-4}
PG_TIME=${PG_TIME:-30}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-docker-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PLUGIN=ballast-bench-$$
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

[ "$(id -u)" = 0 ] || { echo "docker-path: run as root" >&2; exit 1; }
require docker-path docker dockerd fio python3 ldd busybox runuser
if [ -z "${SKIP_PGBENCH:-}" ] && [ ! -x "$PG_BIN/pgbench" ]; then
    echo "docker-path: PostgreSQL is required for pgbench (apt-get install postgresql), or SKIP_PGBENCH=1" >&2
    exit 1
fi
fio --enghelp=nbd >/dev/null 2>&1 || { echo "docker-path: this fio has no nbd engine" >&2; exit 1; }

echo "building ballast (release)..." >&2
(cd "$ROOT" && cargo build --quiet --release --bin ballast)
BALLAST=$TARGET/release/ballast

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"/{host,rootfs,docker}
RESULTS=$BENCH_DIR/results.tsv
: >"$RESULTS"
SOCK=$BENCH_DIR/control.sock
DOCKER=(docker)
DOCKERD_PID=
DAEMON_PID=
CONTAINER=
PGVOL=$BENCH_DIR/pgvol

cleanup() {
    set +e
    if [ -n "$PG_BIN" ] && [ -f "$BENCH_DIR/pg.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$(cat "$BENCH_DIR/pg.pid")" -m immediate stop >/dev/null 2>&1
    fi
    mountpoint -q "$PGVOL" && umount "$PGVOL"
    [ -n "$CONTAINER" ] && "${DOCKER[@]}" rm -f "$CONTAINER" >/dev/null 2>&1
    if [ -n "$DAEMON_PID" ]; then
        "${DOCKER[@]}" volume rm -f bench >/dev/null 2>&1
        "$BALLAST" --socket "$SOCK" delete nbdbench >/dev/null 2>&1
        kill "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null
    fi
    if [ -n "$DOCKERD_PID" ]; then
        kill "$DOCKERD_PID" 2>/dev/null; wait "$DOCKERD_PID" 2>/dev/null
    fi
    rm -f "/run/docker/plugins/$PLUGIN.sock"
    # The FUSE descriptor holder exits once its socket is gone.
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

# A dockerd: the running one, or our own on private paths.
if ! docker info >/dev/null 2>&1; then
    dockerd --data-root "$BENCH_DIR/docker/data" --exec-root "$BENCH_DIR/docker/exec" \
        --pidfile "$BENCH_DIR/docker/dockerd.pid" -H "unix://$BENCH_DIR/docker/docker.sock" \
        --iptables=false --ip-masq=false --bridge=none >"$BENCH_DIR/docker/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    DOCKER=(docker -H "unix://$BENCH_DIR/docker/docker.sock")
    for _ in $(seq 300); do "${DOCKER[@]}" info >/dev/null 2>&1 && break; sleep 0.2; done
    "${DOCKER[@]}" info >/dev/null 2>&1 || { echo "docker-path: dockerd did not start" >&2; exit 1; }
fi

# The image: static busybox, and fio with its libraries.
R=$BENCH_DIR/rootfs
mkdir -p "$R/bin" "$R/vol" "$R/host" "$R/tmp"
cp "$(command -v busybox)" "$R/bin/busybox"
for applet in sh sleep cat; do ln -s busybox "$R/bin/$applet"; done
FIO=$(command -v fio)
cp "$FIO" "$R/bin/fio"
ldd "$FIO" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done
tar -C "$R" -cf "$BENCH_DIR/rootfs.tar" .
IMAGE=ballast-bench-fio:$$
"${DOCKER[@]}" import "$BENCH_DIR/rootfs.tar" "$IMAGE" >/dev/null

"$BALLAST" daemon --root "$BENCH_DIR/root" --control-socket "$SOCK" --nbd-listen off \
    --docker-plugin "$PLUGIN" >"$BENCH_DIR/daemon.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 300); do [ -S "$SOCK" ] && "$BALLAST" --socket "$SOCK" pool >/dev/null 2>&1 && break; sleep 0.1; done

"${DOCKER[@]}" volume create -d "$PLUGIN" -o size=4G bench >/dev/null
CONTAINER=ballast-bench-$$
"${DOCKER[@]}" run -d --name "$CONTAINER" --network none --security-opt seccomp=unconfined \
    -v bench:/vol -v "$BENCH_DIR/host:/host" "$IMAGE" sleep 86400 >/dev/null
ATTACHED=$("${DOCKER[@]}" volume inspect --format '{{index .Status "attached"}}' bench)
MOUNTPOINT=$("${DOCKER[@]}" volume inspect --format '{{.Mountpoint}}' bench)
echo "ballast volume attached through: $ATTACHED" >&2

"$BALLAST" --socket "$SOCK" create nbdbench --size 4G >/dev/null
NBD_URI="nbd+unix:///nbdbench?socket=$BENCH_DIR/root/nbd.sock"

echo "writing the 1 GiB test files..." >&2
for dir in /vol /host; do
    "${DOCKER[@]}" exec "$CONTAINER" fio --name=fill --filename="$dir/fio.dat" --size=1G \
        --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 >/dev/null
done
fio --name=fill --ioengine=nbd --uri="$NBD_URI" --size=1G --rw=write --bs=1M --iodepth=8 >/dev/null
sync

WORKLOADS=("randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8" "fsync 4k 1")
TARGETS=(ballast host nbd)

fio_args() { # workload -> fio arguments
    set -- $1
    case $1 in
        fsync) echo "--rw=write --bs=$2 --iodepth=$3 --fsync=1" ;;
        *) echo "--rw=$1 --bs=$2 --iodepth=$3" ;;
    esac
}

run_fio() { # target workload out
    local args
    args=$(fio_args "$2")
    case $1 in
        ballast) "${DOCKER[@]}" exec "$CONTAINER" fio --name=b --filename=/vol/fio.dat --size=1G \
                    --ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" \
                    --output-format=json $args >"$3" ;;
        host) "${DOCKER[@]}" exec "$CONTAINER" fio --name=b --filename=/host/fio.dat --size=1G \
                    --ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" \
                    --output-format=json $args >"$3" ;;
        nbd) fio --name=b --ioengine=nbd --uri="$NBD_URI" --size=1G --time_based \
                    --runtime="$RUNTIME" --output-format=json $args >"$3" 2>/dev/null ;;
    esac
}

for round in $(seq 1 "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        n=${#TARGETS[@]}
        for i in $(seq 0 $((n - 1))); do
            t=${TARGETS[$(( (i + round) % n ))]}
            out=$BENCH_DIR/fio.json
            run_fio "$t" "$w" "$out"
            python3 - "$out" "$round" "$t" "$w" >>"$RESULTS" <<'PY'
import json, sys
path, rnd, target, workload = sys.argv[1:]
text = open(path).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
kind = "read" if "read" in workload else "write"
d = job[kind]
print(f"fio\t{rnd}\t{target}\t{workload}\t{d['iops']:.1f}\t{d['bw'] / 1024:.1f}")
PY
            tail -1 "$RESULTS" >&2
        done
        echo "round $round: $w done" >&2
    done
done

pgbench_run() { # target round
    local data
    case $1 in
        ballast) data=$PGVOL/pgdata ;;
        host) data=$BENCH_DIR/host/pgdata ;;
    esac
    rm -rf "$data"
    mkdir -p "$data"
    chown postgres: "$data"
    chmod 700 "$data"
    local sockdir=$BENCH_DIR/pgsock
    mkdir -p "$sockdir"
    chown postgres: "$sockdir"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$data" --no-locale -E UTF8 -A trust >/dev/null
    echo "$data" >"$BENCH_DIR/pg.pid"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$sockdir/pg.log" -w \
        -o "-k $sockdir -c listen_addresses='' -c shared_buffers=128MB" start >/dev/null
    runuser -u postgres -- "$PG_BIN/pgbench" -h "$sockdir" -i -q -s "$PG_SCALE" postgres >/dev/null 2>&1
    local tps
    tps=$(runuser -u postgres -- "$PG_BIN/pgbench" -h "$sockdir" -c "$PG_CLIENTS" -j 2 -T "$PG_TIME" postgres 2>/dev/null \
        | awk '/^tps/ {print $3; exit}')
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -w -m fast stop >/dev/null
    rm -f "$BENCH_DIR/pg.pid"
    rm -rf "$data"
    printf 'pgbench\t%s\t%s\tpgbench\t%s\t0\n' "$2" "$1" "$tps" >>"$RESULTS"
    echo "pgbench round $2 $1: $tps TPS" >&2
}

if [ -z "${SKIP_PGBENCH:-}" ]; then
    mkdir -p "$PGVOL"
    mount --bind "$MOUNTPOINT" "$PGVOL"
    for round in $(seq 1 "$PG_ROUNDS"); do
        if [ $((round % 2)) = 1 ]; then order="ballast host"; else order="host ballast"; fi
        for t in $order; do pgbench_run "$t" "$round"; done
    done
fi

python3 - "$RESULTS" "$ROUNDS" "$RUNTIME" "$ATTACHED" <<'PY'
import statistics, sys
from collections import defaultdict
path, rounds, runtime, attached = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
val = defaultdict(dict)   # (workload) -> target -> {round: value}
for kind, rnd, target, workload, iops, mibs in rows:
    v = float(iops) if ("4k" in workload or kind == "pgbench") else float(mibs)
    val[workload].setdefault(target, {})[rnd] = v
names = {
    "randread 4k 32": "4 KiB random read, qd32 (IOPS)",
    "randwrite 4k 32": "4 KiB random write, qd32 (IOPS)",
    "read 1M 8": "1 MiB read, qd8 (MiB/s)",
    "write 1M 8": "1 MiB write, qd8 (MiB/s)",
    "fsync 4k 1": "4 KiB write + fsync, qd1 (IOPS)",
    "pgbench": "PostgreSQL pgbench (TPS)",
}
goal = {"randread 4k 32": 0.5, "randwrite 4k 32": 0.5, "fsync 4k 1": 0.5,
        "read 1M 8": 0.8, "write 1M 8": 0.8, "pgbench": 0.8}
fmt = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"
print(f"ballast Docker volume ({attached}) vs a host directory, fio io_uring O_DIRECT "
      f"inside the container, {runtime} s runs, {rounds} rotating rounds; medians")
print()
print("| workload | ballast volume | host directory | ratio (median of rounds) | NBD export | goal |")
print("|---|---|---|---|---|---|")
for w in names:
    if w not in val:
        continue
    t = val[w]
    med = {k: statistics.median(v.values()) for k, v in t.items()}
    ratios = [t["ballast"][r] / t["host"][r] for r in t["ballast"] if r in t.get("host", {}) and t["host"][r]]
    ratio = statistics.median(ratios) if ratios else float("nan")
    nbd = fmt(med["nbd"]) if "nbd" in med else "-"
    ok = "met" if ratio >= goal[w] else "missed"
    print(f"| {names[w]} | {fmt(med['ballast'])} | {fmt(med['host'])} | {ratio:.2f} "
          f"({', '.join(f'{r:.2f}' for r in ratios)}) | {nbd} | >= {goal[w]} {ok} |")
PY
