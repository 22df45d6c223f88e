#!/usr/bin/env bash
# Run a comparison table's sweeps, then collect them into one table and its plots.
#
#   bash benchmarks/table.sh cpu                 # experiment=table_cpu, then table_cpu_ablations, table_cpu_dp
#   bash benchmarks/table.sh paper OUT_DIR       # the literature-scale presets, on a GPU machine
#
# Every run lands under OUT_DIR (default multirun/table_<preset>_<time>): main/<n>/, then
# ablations/<n>/ and dp/<n>/ for the presets table_<preset>_ablations and table_<preset>_dp where
# they exist, each with its results.json; the table is OUT_DIR/table.{md,csv} and the plots
# OUT_DIR/table_*.png. Extra arguments after OUT_DIR go to every sweep (e.g. seed=0,1,2).
# Resumable: run it again with the same OUT_DIR and only the cells not finished yet run (a cell is
# known by its resolved config), so a table is built in parts; compare.py refuses to merge cells
# that ran with other code or settings.
set -euo pipefail
preset=${1:-cpu}
out=${2:-multirun/table_${preset}_$(date +%Y-%m-%d_%H-%M-%S)}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-python}
cd "$(dirname "$0")/.."

start=$(date +%s)
"$python" run_simulation.py -m "experiment=table_${preset}" "hydra.sweep.dir=${out}/main" "$@"
for part in ablations dp; do
  if [[ -f "conf/experiment/table_${preset}_${part}.yaml" ]]; then
    "$python" run_simulation.py -m "experiment=table_${preset}_${part}" "hydra.sweep.dir=${out}/${part}" "$@"
  fi
done
echo "sweeps took $(( ($(date +%s) - start) / 60 )) min"
"$python" benchmarks/compare.py "$out" --out "${out}/table" --plots
