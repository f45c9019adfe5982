#!/bin/bash
# Leave-one-lab-out of the cross-lab recipe and five variants on one GPU, all folds at once (issue 11),
# then the classifier's crops/s by batch size and its out-of-memory fallback.
#
#   benchmarks/lolo_gpu.sh DATA_DIR RECIPE.yaml RUNS_DIR [MINUTES]
#
# Runs Keras on JAX (KERAS_BACKEND=jax: a GPU machine with JAX needs no TensorFlow build for its CUDA),
# each fold in its own process with 7.5 % of the GPU's memory. Variants: the recipe (train-crosslab.yaml
# standardises each crop's optical density, model.stain_standardise); the recipe without that layer; colour-blind
# input without it (model.grey_input); and on top of the recipe seed 1, a fresh balanced draw of the training
# cells every epoch (training.rebalance_each_epoch), and half the cells re-stained as another cell of their batch
# (augmentation.stain_transfer_p). The recipe's lr_schedule becomes `cosine` (per step;
# cosine_time needs TensorFlow); MINUTES (default 3) caps each training. The mll-bone-marrow scale is taken from the recipe's
# BLA source, so a compact copy (benchmarks/compact_data.py) works as it is.
# Results: RUNS_DIR/<variant>-<lab>/cross_lab.{json,md}, logs beside them, classifier_device.txt
# (CLASSIFIER_ARGS replaces its arguments, e.g. smaller ones for a dry run on a CPU).
set -u
data=$1 recipe=$2 runs=$3 minutes=${4:-3}
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.075
here=$(cd "$(dirname "$0")" && pwd)
mll_mpp=$(python3 -c "import sys, yaml; print(next(s['mpp'] for s in yaml.safe_load(open(sys.argv[1]))['sources'] \
  if s['path'].endswith('mll-bone-marrow/BLA')))" "$recipe") || exit 2
mkdir -p "$runs"
pids=()
launch() {
  local name=$1 lab=$2; shift 2
  python3 "$here/cross_lab.py" "$data" --config "$recipe" --mll-mpp "$mll_mpp" --max-minutes "$minutes" \
    --set training.lr_schedule=cosine --labs "$lab" --out "$runs/$name-$lab" --work "$runs/work-$name-$lab" "$@" \
    > "$runs/$name-$lab.log" 2>&1 &
  pids+=($!)
}
no_stain=(--set model.stain_standardise=false)
for lab in ghaderzadeh-all mll-bone-marrow; do
  launch recipe "$lab"
  launch no-stain "$lab" "${no_stain[@]}"
  launch grey "$lab" "${no_stain[@]}" --set model.grey_input=true
  launch seed1 "$lab" --set seed=1
  launch rebalance "$lab" --set training.rebalance_each_epoch=true
  launch stain-transfer "$lab" --set augmentation.stain_transfer_p=0.5
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
cat "$runs"/*/cross_lab.md
XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 python3 "$here/classifier_device.py" \
  ${CLASSIFIER_ARGS:---batches 64,256,1024 --crops 16384 --oom-batch 131072} 2>&1 | tee "$runs/classifier_device.txt"
exit $status
