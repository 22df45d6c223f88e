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
# to merge cells that ran with other code or settings. The default OUT is inside the repository and
# its .gitignore keeps each cell's config.yaml and results.json: commit them after a sitting, and
# the next sitting, on any fresh clone, resumes where this one stopped. The table is OUT/table.{md,csv}, the plots
# OUT/table_*.png, rebuilt from every finished cell after each call.
set -euo pipefail
preset=${1:-cpu}
shift $(( $# > 0 ? 1 : 0 ))
out=${OUT:-benchmarks/results/table_${preset}}
python=${PYTHON:-python}
cd "$(dirname "$0")/.."

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

run_part() {
  local part=$1
  case "$part" in
    ablations_*)
      "$python" run_simulation.py -m "experiment=table_${preset}_ablations" "dataset=${part#ablations_}" \
        "hydra.sweep.dir=${out}/ablations" "${overrides[@]}" ;;
    dp)
      "$python" run_simulation.py -m "experiment=table_${preset}_dp" "hydra.sweep.dir=${out}/dp" "${overrides[@]}" ;;
    *_a*)
      "$python" run_simulation.py -m "experiment=table_${preset}" "dataset=${part%_a*}" "partition.alpha=${part##*_a}" \
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
