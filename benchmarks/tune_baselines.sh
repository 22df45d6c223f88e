#!/usr/bin/env bash
# Every baseline's hyperparameters searched with Optuna (experiment=tune: TPE, seeded) on the
# validation split of experiment=readings, the cell and seed of FedVTC's readings (RESULTS.md
# "Readings"). Each baseline gets FedVTC's budget, 14 configurations on this cell: the plain grid's
# trials made before (benchmarks/readings.sh's sibling, GRIDS below) plus Optuna's, as many as make 14.
#
#   bash benchmarks/tune_baselines.sh mnist 0.1
#   TUNE_ONLY="fedtgp fedgen" bash benchmarks/tune_baselines.sh mnist 0.1   # only these baselines
#   GRID=1 bash benchmarks/tune_baselines.sh mnist 0.1    # the plain grids only (the earlier protocol)
#
# On a dataset where FedVTC had no readings, FedVTC is searched too, with the same budget: name it in
# TUNE_ONLY. Its search is the alignment strength (the KL weight beta, summed over p; 1/p = the KL
# averaged over p; 0 = none), the reading RESULTS.md §1 found to decide FedVTC's CIFAR-10 accuracy:
#
#   TUNE_ONLY="fedvtc fedproto fedtgp ccvr fedgen fedtype" BUDGET=6 OUT=benchmarks/results/tuning_cpu \
#       bash benchmarks/tune_baselines.sh cifar10 0.1
#
# The grids land in $OUT/readings/<dataset>_a<alpha>/ beside FedVTC's readings, Optuna's trials
# in $OUT/tuning/<dataset>_a<alpha>/<algorithm>/, each named after its overrides (OUT defaults to
# multirun; under benchmarks/results/ each trial's config.yaml and results.json are kept by git,
# so a search outlasts a session). Started again, a grid runs only its unfinished cells and a
# search replays its finished trials without running them (seeded sampler, cells known by their
# config), then goes on.
# Then: python benchmarks/tuning_table.py $OUT/readings/<dataset>_a<alpha> $OUT/tuning/<dataset>_a<alpha>
set -euo pipefail
dataset=${1:-mnist}
alpha=${2:-0.1}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-python}
budget=${BUDGET:-14}  # configurations per method: FedVTC's 14 readings (benchmarks/readings.sh)
out=${OUT:-multirun}
cd "$(dirname "$0")/.."

GRIDS=(
  "algorithm=fedvtc algorithm.kl_weight=0.0,0.015625,1.0"
  "algorithm=fedproto algorithm.proto_weight=0.1,1.0,10.0"
  "algorithm=fedtgp algorithm.proto_weight=0.1,1.0,10.0"
  "algorithm=ccvr algorithm.num_virtual_per_class=100,500 algorithm.calibration_epochs=1,5"
  "algorithm=fedgen algorithm.generated_weight=0.1,1.0,10.0"
  "algorithm=fedtype algorithm.conformal_alpha=0.05,0.1,0.2"
)
# Each method's main knobs, around the values its paper uses (Optuna's override syntax).
SPACES=(
  "algorithm=fedvtc algorithm.kl_weight=tag(log,interval(0.001,10))"
  "algorithm=fedproto algorithm.proto_weight=tag(log,interval(0.01,30))"
  "algorithm=fedtgp algorithm.proto_weight=tag(log,interval(0.01,30)) algorithm.margin_threshold=tag(log,interval(1,1000))"
  "algorithm=ccvr algorithm.num_virtual_per_class=tag(log,int(interval(50,1000))) algorithm.calibration_epochs=int(interval(1,10)) algorithm.shrinkage=interval(0,0.5)"
  "algorithm=fedgen algorithm.generated_weight=tag(log,interval(0.1,100)) algorithm.diversity_weight=interval(0,1)"
  "algorithm=fedtype algorithm.conformal_alpha=interval(0.01,0.3) algorithm.forward_weight=tag(log,interval(0.1,10)) algorithm.backward_weight=tag(log,interval(0.1,10))"
)
grid_size() {  # the number of cells of a grid line: the product of its comma-separated choices
  local n=1 override values
  for override in $1; do values=${override#*=}; n=$(( n * ($(tr -cd , <<<"$values" | wc -c) + 1) )); done
  echo "$n"
}
# FedVTC only when named: on MNIST its budget was its readings (benchmarks/readings.sh).
selected() {
  local name=${1#algorithm=}
  if [[ -z "${TUNE_ONLY:-}" ]]; then [[ $name != fedvtc ]]; else [[ " ${TUNE_ONLY} " == *" $name "* ]]; fi
}

# Training alone, the reference every method is read against (one cell; finished cells are not rerun).
"$python" run_simulation.py -m experiment=readings "dataset=${dataset}" "partition.alpha=${alpha}" algorithm=local \
  "hydra.sweep.dir=${out}/readings/${dataset}_a${alpha}" "$@"

for i in "${!GRIDS[@]}"; do
  grid=${GRIDS[$i]}
  algorithm=${grid%% *}
  selected "$algorithm" || continue
  # shellcheck disable=SC2086  # a grid is a list of overrides
  "$python" run_simulation.py -m experiment=readings "dataset=${dataset}" "partition.alpha=${alpha}" $grid \
    "hydra.sweep.dir=${out}/readings/${dataset}_a${alpha}" "$@"
  [[ -n "${GRID:-}" ]] && continue
  trials=$(( budget - $(grid_size "${grid#* }") ))
  (( trials > 0 )) || continue
  # shellcheck disable=SC2086  # a space is a list of overrides
  "$python" run_simulation.py -m experiment=tune "dataset=${dataset}" "partition.alpha=${alpha}" ${SPACES[$i]} \
    "hydra.sweeper.n_trials=${trials}" "hydra.sweep.dir=${out}/tuning/${dataset}_a${alpha}/${algorithm#algorithm=}" "$@"
done
