#!/usr/bin/env bash
# ballast backups vs restic on the reference workload (DESIGN.md "Backups"):
# a 2 GiB volume (40% random, 30% zeros, 30% a repeated 1 MiB pattern),
# full backup, incremental after a 1% change (82 x 256 KiB), restore; both to
# a file target on the same disk. restic backs up the same bytes as an image
# file. Needs restic (scripts/install-test-deps.sh installs it).
#
# Usage: benches/backup-restic.sh [SIZE_MIB]   (default 2048)
set -euo pipefail

SIZE_MIB=${1:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ballast-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

command -v restic >/dev/null || { echo "restic not found: run scripts/install-test-deps.sh" >&2; exit 1; }
cargo build -q --release -p ballast-backupstore --example backup-bench --manifest-path "$ROOT/Cargo.toml"
BENCH="$CARGO_TARGET_DIR/release/examples/backup-bench"

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l | xargs printf '%.2f'; }
dir_mib() { du -sm "$1" | cut -f1; }

POOL=$WORK/pool IMAGE=$WORK/image.raw
"$BENCH" prepare "$POOL" "$IMAGE" "$SIZE_MIB" 2>/dev/null
sync

# ballast
DEST="file://$WORK/ballast-store"
t=$(now); full=$("$BENCH" backup "$POOL" "$DEST" 2>/dev/null); b_full=$(elapsed "$t")
b_full_mib=$(dir_mib "$WORK/ballast-store")
"$BENCH" change "$POOL" "$IMAGE" 2>/dev/null
sync
t=$(now); incr=$("$BENCH" backup "$POOL" "$DEST" 2>/dev/null); b_incr=$(elapsed "$t")
b_incr_new=$(echo "$incr" | python3 -c 'import json,sys; print(json.load(sys.stdin)["new_bytes"] >> 20)')
b_total_mib=$(dir_mib "$WORK/ballast-store")
url=$(echo "$incr" | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
t=$(now); "$BENCH" restore "$POOL" "$url" restored 2>/dev/null; b_restore=$(elapsed "$t")
"$BENCH" export "$POOL" restored "$WORK/restored.raw" 2>/dev/null
cmp "$IMAGE" "$WORK/restored.raw" || { echo "ballast restore differs from the image" >&2; exit 1; }
rm -f "$WORK/restored.raw"

# restic: a full backup of the image as it is now, then its own 1% change
# (the same workload, different random runs).
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY=$WORK/restic-repo
restic init -q
t=$(now); restic backup -q "$IMAGE" >/dev/null; r_full=$(elapsed "$t")
r_full_mib=$(dir_mib "$RESTIC_REPOSITORY")
"$BENCH" change "$POOL" "$IMAGE" 2>/dev/null
sync
t=$(now); restic backup -q "$IMAGE" >/dev/null; r_incr=$(elapsed "$t")
r_total_mib=$(dir_mib "$RESTIC_REPOSITORY")
t=$(now); restic restore -q latest --target "$WORK/restic-restore" >/dev/null; r_restore=$(elapsed "$t")

printf '\n%-28s %12s %12s\n' "$SIZE_MIB MiB volume" ballast restic
printf '%-28s %11ss %11ss\n' "full backup" "$b_full" "$r_full"
printf '%-28s %11ss %11ss\n' "incremental (1% change)" "$b_incr" "$r_incr"
printf '%-28s %11ss %11ss\n' "restore" "$b_restore" "$r_restore"
printf '%-28s %10sMiB %10sMiB\n' "store after full" "$b_full_mib" "$r_full_mib"
printf '%-28s %10sMiB %10sMiB\n' "store after incremental" "$b_total_mib" "$r_total_mib"
printf '%-28s %10sMiB\n' "ballast new bytes (incr.)" "$b_incr_new"
