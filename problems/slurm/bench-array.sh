#!/usr/bin/env bash
# Run a benchmark suite as a Slurm job array: one shard per array task, then one merge job.
#
# Submit (from a login node, in the repository, with `posterior` built or on PATH):
#
#     problems/slurm/bench-array.sh SUITE.toml OUTDIR [SHARDS]
#
# This submits SHARDS array tasks (default 8), task K running
#     posterior bench SUITE.toml --shard K/SHARDS --out OUTDIR/shard-K
# and a merge job that starts when all of them succeeded (afterok) and runs
#     posterior bench merge OUTDIR/shard-* --out OUTDIR/merged
# OUTDIR/merged then holds results.jsonl, results.md, the reconstructions and the grids,
# equal to an unsharded run (tests/bench.rs checks this) except for the time columns.
#
# A failed or pre-empted task can simply be resubmitted: `posterior bench` resumes a shard
# directory without redoing finished items. Extra sbatch options (partition, account, time,
# GPUs) go in SBATCH_OPTS, e.g. SBATCH_OPTS="--partition=cpu --time=02:00:00".
# Any other scheduler works the same way: run the shards as independent jobs, then merge.
#
# Resources per task: the CPU path uses the cores it is given (rayon); set
# --cpus-per-task and RAYON_NUM_THREADS to match.
#SBATCH --job-name=posterior-bench
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

POSTERIOR=${POSTERIOR:-}
if [[ -z "$POSTERIOR" ]]; then
    if [[ -x target/release/posterior ]]; then POSTERIOR=target/release/posterior
    else POSTERIOR=posterior; fi
fi

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    # Inside an array task: run one shard.
    suite=$1 out=$2 shards=$3
    k=$SLURM_ARRAY_TASK_ID
    export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    exec "$POSTERIOR" bench "$suite" --shard "$k/$shards" --out "$out/shard-$k"
fi

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 SUITE.toml OUTDIR [SHARDS]" >&2
    exit 2
fi
suite=$1 out=$2 shards=${3:-8}
if ! [[ "$shards" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: SHARDS must be a positive integer, got '$shards'" >&2
    exit 2
fi
# Check the suite (data, methods, operators, prior) before queueing anything.
"$POSTERIOR" bench "$suite" --check
mkdir -p "$out"
# shellcheck disable=SC2086  # SBATCH_OPTS is a list of options
array=$(sbatch --parsable ${SBATCH_OPTS:-} --array="1-$shards" "$0" "$suite" "$out" "$shards")
array=${array%%;*}
dirs=""
for k in $(seq 1 "$shards"); do dirs+=" $(printf '%q' "$out/shard-$k")"; done
# shellcheck disable=SC2086
merge=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency="afterok:$array" --job-name=posterior-bench-merge \
    --output="$out/merge-%j.out" \
    --wrap="$(printf '%q' "$POSTERIOR") bench merge$dirs --out $(printf '%q' "$out/merged")")
echo "submitted array job $array ($shards shards) and merge job $merge; results in $out/merged"
