#!/usr/bin/env bash
# FedVTC's readings and the baselines' hyperparameters, chosen on the validation split
# (experiment=readings: table_cpu's cell at 10 rounds, eval.validation=2000). RESULTS.md "Readings".
#
#   bash benchmarks/readings.sh mnist 0.1        # every reading of the list below on one setting
#   bash benchmarks/readings.sh cifar10 0.1 seed=1   # extra overrides go to every cell
#   EXPERIMENT=readings_table bash benchmarks/readings.sh cifar10 0.1   # TABLE_READINGS, table-sized
#
# Each line of READINGS is one cell (its overrides); all land in multirun/<experiment>/<dataset>_a<alpha>/
# under a directory named after the overrides. Started again, it runs only the cells not finished.
# Then: python benchmarks/compare.py multirun/<experiment>/<dataset>_a<alpha> --out <table> --validation
set -euo pipefail
dataset=${1:-mnist}
alpha=${2:-0.1}
shift $(( $# > 2 ? 2 : $# ))
python=${PYTHON:-python}
cd "$(dirname "$0")/.."

# Each reading spells out what it depends on, whatever the defaults of the day:
# SG: one shared VTC that synthesizes with the server's average, DM at gamma = 1, 60 VTC steps;
# SG0: the same without DM; SG0E: SG0 with one VTC pass over the local data per round, the reading
# chosen as FedVTC's default. fedvtc_private_vtc is the former default. (RESULTS.md §0 ran these
# before the defaults changed, with the directory names given there.)
SG="algorithm.shared_vtc=true algorithm.vtc.synthesize_from=global algorithm.vtc.dm_weight=1.0 algorithm.vtc.epochs=null"
SG0="algorithm.shared_vtc=true algorithm.vtc.synthesize_from=global algorithm.vtc.dm_weight=0.0 algorithm.vtc.epochs=null"
SG0E="algorithm.shared_vtc=true algorithm.vtc.synthesize_from=global algorithm.vtc.dm_weight=0.0 algorithm.vtc.epochs=1.0"
READINGS=(
  "algorithm=fedvtc $SG0E"
  "algorithm=fedvtc_private_vtc"
  "algorithm=local"
  "algorithm=ccvr"
  "algorithm=fedvtc $SG0"
  "algorithm=fedvtc $SG"
  "algorithm=fedproto"
  "algorithm=fedvtc_real_finetune"
  "algorithm=fedvtc $SG0E algorithm.vtc.epochs=0.5"
  "algorithm=fedvtc $SG0E algorithm.synthesis.per_class=150"
  "algorithm=fedvtc $SG0E algorithm.kl_weight=4.0"
  "algorithm=fedvtc $SG0E algorithm.synthesis.noise_scale=0.5"
  "algorithm=fedvtc algorithm.shared_vtc=true algorithm.vtc.synthesize_from=local algorithm.vtc.dm_weight=1.0 algorithm.vtc.epochs=null"
  "algorithm=fedvtc $SG0 algorithm.vtc.train_encoder=true algorithm.vtc.encoder_weight=0.1"
  "algorithm=fedvtc $SG0E algorithm.kl_reduction=mean"
  "algorithm=fedvtc $SG0E algorithm.vtc.start_round=4"
  "algorithm=fedvtc $SG0E algorithm.vtc.train_noise=0.0"
  "algorithm=fedvtc $SG0E algorithm.vtc.train_noise=0.3"
)
# The generator read again on the table's cell (experiment=readings_table: 20 rounds, a quarter of
# the training set, every method with its tuned values, so FedVTC at CIFAR-10's beta = 0), since the
# 10-round cell understated what good images add on CIFAR-10 (RESULTS.md "The ablations"). Each line
# changes one thing; the first three and the last are the references (FedVTC, training alone, real
# images, each class's mean image: the best one template per class can be).
TABLE_READINGS=(
  "algorithm=fedvtc"
  "algorithm=local"
  "algorithm=fedvtc_oracle_images"
  "algorithm=fedvtc algorithm.vtc.epochs=4.0"
  "algorithm=fedvtc algorithm.vtc.width=32"
  "algorithm=fedvtc_style algorithm.vtc.train_input=class_mean"
  "algorithm=fedvtc algorithm.vtc.train_noise=0.3"
  "algorithm=fedvtc_oracle_mean"
)
experiment=${EXPERIMENT:-readings}
if [[ "$experiment" == readings_table ]]; then READINGS=("${TABLE_READINGS[@]}"); fi
if [[ -n "${READINGS_ONLY:-}" ]]; then  # e.g. READINGS_ONLY="0 3" runs lines 0 and 3 only
  selected=(); for i in $READINGS_ONLY; do selected+=("${READINGS[$i]}"); done; READINGS=("${selected[@]}")
fi
for cell in "${READINGS[@]}"; do
  # shellcheck disable=SC2086  # a cell is a list of overrides
  "$python" run_simulation.py -m "experiment=${experiment}" "dataset=${dataset}" "partition.alpha=${alpha}" $cell "$@"
done
