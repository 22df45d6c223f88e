#!/usr/bin/env bash
# Run a comparison table's sweeps in parts, then collect every finished cell into one table and its plots.
#
#   bash benchmarks/table.sh cpu                      # every part of experiment=table_cpu not finished yet
#   bash benchmarks/table.sh cpu mnist_a0.1           # one part (several may be named)
#   bash benchmarks/table.sh cpu cifar10_a0.1 seed=0  # a part cut smaller by extra overrides
#   bash benchmarks/table.sh paper                    # the literature-scale presets, on a GPU machine
#   OUT=multirun/mytable bash benchmarks/table.sh cpu # another output directory (default benchmarks/results/table_<preset>)
#
# Parts: <dataset>_a<alpha> (the main grid of experiment=table_<preset> on that setting),
# ablations_<dataset> (experiment=table_<preset>_ablations) and dp (experiment=table_<preset>_dp).
# Every run lands under OUT/main/, OUT/ablations/ or OUT/dp/ in a directory named after its
# overrides, with its results.json. Resumable: a part started again runs only the cells not finished
# yet (a cell is known by its resolved config), so a table is built in sittings; compare.py refuses
# to merge cells that ran with other code or settings. The default OUT is inside the repository, and
# benchmarks/results/.gitignore keeps each cell's config.yaml and results.json there: commit them after a sitting, and
# the next sitting, on any fresh clone, resumes where this one stopped. The table is OUT/table.{md,csv}, the plots
# OUT/table_*.png, rebuilt from every finished cell after each call.
#
# One table, one code: OUT/CODE holds the commit its cells run from (written by the first sitting,
# from a checkout with no uncommitted changes to fedvtc/, conf/ or run_simulation.py). A later
# sitting whose checkout differs there runs the cells from a temporary worktree of that commit, so
# work on the method can go on while a table is built. To start a table on new code, use a new OUT
# (or delete OUT/CODE with the cells). A change that moves only some methods' numbers (a new default
# of FedVTC's) needs no new table: put the new commit on CODE's first line and, below it, a line
# "kept <old commit> <label>,<label>" for the methods it cannot move (check that first, e.g. one
# seed of each run again into another OUT and benchmarks/same_numbers.py). Their cells resume
# as finished (same resolved config); the others run again, and compare.py accepts both codes.
set -euo pipefail
preset=${1:-cpu}
shift $(( $# > 0 ? 1 : 0 ))
out=${OUT:-benchmarks/results/table_${preset}}
python=${PYTHON:-python}
cd "$(dirname "$0")/.."
repo=$PWD
# absolute (a venv's python is a symlink that must stay one): the cells may run from another directory
[[ $python == */* ]] && python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the cells may run from another directory (below)
export FEDVTC_DATA_DIR=${FEDVTC_DATA_DIR:-$repo/data}

case "$preset" in
  cpu) all_parts=(mnist_a0.1 mnist_a1.0 ablations_mnist cifar10_a0.1 cifar10_a1.0 ablations_cifar10 dp) ;;
  paper) all_parts=(mnist_a0.1 mnist_a1.0 cifar10_a0.1 cifar10_a1.0 cifar100_a0.1 cifar100_a1.0 ablations_cifar10) ;;
  *) echo "error: unknown preset '$preset'; use cpu or paper" >&2; exit 2 ;;
esac
parts=()
overrides=()
for arg in "$@"; do
  if [[ "$arg" == *=* ]]; then overrides+=("$arg"); else parts+=("$arg"); fi
done
(( ${#parts[@]} )) || parts=("${all_parts[@]}")

# What the cells run: this checkout, or a worktree of the commit the table is pinned to.
code_paths=(fedvtc conf run_simulation.py)
pin=$out/CODE
if [[ ! -f $pin ]]; then
  if ! git diff --quiet HEAD -- "${code_paths[@]}"; then
    echo "error: uncommitted changes to ${code_paths[*]}; commit them first, so that $pin can name the code the table runs" >&2
    exit 2
  fi
  git rev-parse HEAD > "$pin"
  echo "table pinned to $(cat "$pin") ($pin)"
fi
# The first line that is not a comment or a "kept" line (compare.py: cells of earlier code kept).
commit=$(awk '!/^[[:space:]]*(#|kept[[:space:]]|$)/ {print $1; exit}' "$pin")
[[ $commit =~ ^[0-9a-f]{7,40}$ ]] || { echo "error: $pin names no commit on its first line; write one (git rev-parse HEAD)" >&2; exit 2; }
code_dir=$repo
if ! git diff --quiet "$commit" -- "${code_paths[@]}"; then
  code_dir=$(mktemp -d "${TMPDIR:-/tmp}/fedvtc-table-code.XXXXXX")
  trap 'git -C "$repo" worktree remove --force "$code_dir" >/dev/null 2>&1 || rm -rf "$code_dir"' EXIT
  git worktree add --detach --quiet "$code_dir" "$commit"
  echo "this checkout's code differs from the table's: running its cells from ${commit:0:12} in $code_dir"
fi

simulate() {
  (cd "$code_dir" && PYTHONPATH="$code_dir${PYTHONPATH:+:$PYTHONPATH}" "$python" run_simulation.py -m "$@")
}

# A part's cells land in OUT/main/ (the grid of experiment=table_<preset>) or OUT/<kind>/ (that of
# experiment=table_<preset>_<kind>): benchmarks/stale_cells.py composes the cells back by this naming.
run_part() {
  local part=$1
  case "$part" in
    ablations_*)
      simulate "experiment=table_${preset}_ablations" "dataset=${part#ablations_}" \
        "hydra.sweep.dir=${out}/ablations" "${overrides[@]}" ;;
    dp)
      simulate "experiment=table_${preset}_dp" "hydra.sweep.dir=${out}/dp" "${overrides[@]}" ;;
    *_a*)
      simulate "experiment=table_${preset}" "dataset=${part%_a*}" "partition.alpha=${part##*_a}" \
        "hydra.sweep.dir=${out}/main" "${overrides[@]}" ;;
    *)
      echo "error: unknown part '$part'; parts of table_${preset}: ${all_parts[*]}" >&2; exit 2 ;;
  esac
}

for part in "${parts[@]}"; do
  start=$(date +%s)
  run_part "$part"
  echo "part ${part} took $(( ($(date +%s) - start) / 60 )) min"
done
"$python" benchmarks/compare.py "$out" --out "${out}/table" --plots
