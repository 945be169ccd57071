#!/usr/bin/env bash
# Instant restore against the full restore of the same backup, with the
# real daemon, on a file:// store and on moto S3 (over loopback):
#
# For each size in SIZES (GiB, default 1 8) and each target in TARGETS
# (default file s3): a volume filled with incompressible data (fio, 1 MiB
# writes) is backed up; then
#   create_s    seconds until `ballast create r --backup URL` returns
#   first_ms    milliseconds for the first 4 KiB read (qemu-io, mid-volume)
#   iops        4 KiB random-read IOPS (fio nbd, iodepth 32, READ_S s)
#               while the volume hydrates
#   hydrated_s  seconds from the create until its hydrate job has ended
#               (the job's own end time, `ballast wait --json`; with the
#               READ_S seconds of reads above in it)
#   idle_s      the same for a second instant restore nobody reads
#   full_s      seconds for `ballast create w --backup URL --wait` (the full
#               restore, as before instant restore)
# idle_s and full_s are medians of ROUNDS (default 3) pairs, the order
# alternating from pair to pair (the disk's speed swings).
#
# Env: SIZES, TARGETS, READ_S (default 10), ROUNDS, BENCH_DIR (default
# /var/tmp/ballast-instant-bench), BALLAST (a ballast binary; default:
# built with --release), BALLAST_TEST_VENV (moto_server's venv, default
# /opt/ballast-test/venv). The disk needs about 3x the largest size (the
# source, its backup and one restored volume at a time).
set -euo pipefail

SIZES=${SIZES:-1 8}
TARGETS=${TARGETS:-file s3}
READ_S=${READ_S:-10}
ROUNDS=${ROUNDS:-3}
BENCH_DIR=${BENCH_DIR:-/var/tmp/ballast-instant-bench}
VENV=${BALLAST_TEST_VENV:-/opt/ballast-test/venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"

require instant-restore fio qemu-io python3 curl
ballast_binary

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
POOL=$BENCH_DIR/pool
SOCK=$BENCH_DIR/nbd.sock
export BALLAST_SOCKET=$POOL/control.sock
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
DAEMON=
MOTO=

cleanup() {
    for pid in $DAEMON $MOTO; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

uri() { echo "nbd+unix:///$1?socket=$SOCK"; }

"$BALLAST" daemon --root "$POOL" --nbd-socket "$SOCK" --nbd-listen off >>"$BENCH_DIR/daemon.log" 2>&1 &
DAEMON=$!
until "$BALLAST" pool >/dev/null 2>&1; do sleep 0.05; done

# moto runs in this shell (not in the $(dest_of) subshell), so the
# cleanup knows its pid.
case " $TARGETS " in *" s3 "*) start_moto ;; esac
dest_of() {
    case $1 in
    file) echo "file://$BENCH_DIR/store" ;;
    s3) echo "s3://bench/i?endpoint=http://127.0.0.1:$PORT" ;;
    esac
}

# Waits until volume $1 is fully hydrated (`ballast wait`); prints the
# Unix time its hydrate job ended (that of now if nothing was left).
wait_hydrated() {
    "$BALLAST" wait "$1" --json |
        python3 -c 'import json,sys,time; j=json.load(sys.stdin)["job"]; print(j["finished_ms"] / 1000 if j else time.time())'
}

printf '%-6s %5s %9s %9s %9s %11s %8s %8s\n' target GiB create_s first_ms iops hydrated_s idle_s full_s
for size in $SIZES; do
    "$BALLAST" create src --size "${size}G" >/dev/null
    fio --ioengine=nbd --uri="$(uri src)" --name=fill --rw=write --bs=1M --iodepth=8 \
        --size="${size}G" --refill_buffers --buffer_compress_percentage=0 >/dev/null
    for target in $TARGETS; do
        dest=$(dest_of "$target")
        url=$("$BALLAST" backup create src --dest "$dest")
        t0=$(now)
        "$BALLAST" create r --backup "$url" >/dev/null
        create_s=$(since "$t0")
        t1=$(now)
        qemu-io -f raw -c "read $((size * 512))M 4k" "$(uri r)" >/dev/null
        first_ms=$(python3 -c "print(f'{float(\"$(since "$t1")\") * 1000:.0f}')")
        fio --ioengine=nbd --uri="$(uri r)" --name=rr --rw=randread --bs=4k --iodepth=32 \
            --time_based --runtime="$READ_S" --output-format=json --output="$BENCH_DIR/rr.json" >/dev/null
        iops=$(python3 -c "import json; print(round(json.load(open('$BENCH_DIR/rr.json'))['jobs'][0]['read']['iops']))")
        hydrated_s=$(between "$t0" "$(wait_hydrated r)")
        "$BALLAST" delete r >/dev/null
        # ROUNDS pairs, alternating which goes first; medians.
        idles=() fulls=()
        for round in $(seq "$ROUNDS"); do
            for which in $( [ $((round % 2)) = 1 ] && echo "idle full" || echo "full idle"); do
                t3=$(now)
                if [ "$which" = idle ]; then
                    "$BALLAST" create q --backup "$url" >/dev/null
                    idles+=("$(between "$t3" "$(wait_hydrated q)")")
                    "$BALLAST" delete q >/dev/null
                else
                    "$BALLAST" create w --backup "$url" --wait >/dev/null
                    fulls+=("$(since "$t3")")
                    "$BALLAST" delete w >/dev/null
                fi
            done
        done
        idle_s=$(median "${idles[@]}") full_s=$(median "${fulls[@]}")
        echo "  $target ${size} GiB: idle ${idles[*]}; full ${fulls[*]}" >&2
        printf '%-6s %5s %9s %9s %9s %11s %8s %8s\n' "$target" "$size" "$create_s" "$first_ms" "$iops" "$hydrated_s" "$idle_s" "$full_s"
        "$BALLAST" backup delete "$url" >/dev/null
        "$BALLAST" backup gc --dest "$dest" --grace 0s >/dev/null
    done
    "$BALLAST" delete src >/dev/null
done
