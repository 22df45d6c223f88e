#!/usr/bin/env bash
# Every baseline's main hyperparameters on the validation split of experiment=readings, as a plain
# grid (RESULTS.md "Readings"): the same protocol, cell and seed as FedVTC's readings.
#
#   bash benchmarks/tune_baselines.sh mnist 0.1
#   TUNE_ONLY="fedtgp fedgen" bash benchmarks/tune_baselines.sh mnist 0.1   # only these grids
#
# Cells land beside FedVTC's readings in multirun/readings/<dataset>_a<alpha>/, named after their
# overrides; started again, only unfinished cells run.
set -euo pipefail
dataset=${1:-mnist}
alpha=${2:-0.1}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-python}
cd "$(dirname "$0")/.."

GRIDS=(
  "algorithm=fedproto algorithm.proto_weight=0.1,1.0,10.0"
  "algorithm=fedtgp algorithm.proto_weight=0.1,1.0,10.0"
  "algorithm=ccvr algorithm.num_virtual_per_class=100,500 algorithm.calibration_epochs=1,5"
  "algorithm=fedgen algorithm.generated_weight=0.1,1.0,10.0"
  "algorithm=fedtype algorithm.conformal_alpha=0.05,0.1,0.2"
)
for grid in "${GRIDS[@]}"; do
  algorithm=${grid%% *}
  if [[ -n "${TUNE_ONLY:-}" && " ${TUNE_ONLY} " != *" ${algorithm#algorithm=} "* ]]; then continue; fi
  # shellcheck disable=SC2086  # a grid is a list of overrides
  "$python" run_simulation.py -m experiment=readings "dataset=${dataset}" "partition.alpha=${alpha}" $grid "$@"
done
