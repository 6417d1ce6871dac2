#!/bin/bash
# The tuned recipes' three seeds per set on the GPU (the searches ran on 2 CPU cores here).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src SMALLMED_DATA_DIR=$PWD/.devrun/data PYTHONUNBUFFERED=1
PY=python3
$PY -c "import torch, torchvision, timm; print('torch', torch.__version__, 'tv', torchvision.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
nvidia-smi -L
R=/tmp/runs
mkdir -p $R
for set in ${SETS:-retinamnist pneumoniamnist}; do
  for s in 0 1 2; do
    t0=$(date +%s)
    $PY -m smallmed.cli train --config docs/studies/medmnist/tune/$set/best.yaml --seed $s \
        --out $R/$set/tuned/s$s --no-progress --no-figures ${EXTRA:-} > $R/$set-s$s.log 2>&1
    echo "$set s$s rc=$? $(( $(date +%s) - t0 )) s"; tail -3 $R/$set-s$s.log
    tar czf $OUT/runs.tgz -C $R --exclude='*.pt' --exclude='*.safetensors' --exclude='*.png' .  # after each run
  done
done
ls -la $OUT
