#!/usr/bin/env bash
# Plain entry point for any runner: sets memhp up and runs the scenario suite.
#   ci/run-memhp.sh [--kernel PATH] [--shard I/N] [--junit FILE] [-- extra pytest args]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
kernel="" shard="" junit="junit.xml"
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --shard) shard=$2; shift 2 ;;
    --junit) junit=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: $0 [--kernel PATH] [--shard I/N] [--junit FILE] [-- pytest args]" >&2; exit 2 ;;
  esac
done
make -C "$here" setup
args=(-n auto --junitxml="$junit")
[ -n "$kernel" ] && args+=(--memhp-kernel="$kernel")
[ -n "$shard" ] && args+=(--memhp-shard="$shard")
exec "$here/.venv/bin/pytest" "$here/tests/scenarios" "${args[@]}" "$@"
