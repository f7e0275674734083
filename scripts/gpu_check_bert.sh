#!/usr/bin/env bash
# GPU check of bert_finetune: one bf16 epoch on Amazon Industrial & Scientific with trainer=gpu,
# then the evaluation; prints seconds per epoch and test NDCG@10 (and the CPU figure to compare).
#
#   bash scripts/gpu_check_bert.sh                       # the default config, 1 epoch (frozen
#                                                        # phase: one epoch leaves no second)
#   bash scripts/gpu_check_bert.sh model.finetune_start=start   # 1 epoch with the top layer training
#   EPOCHS=3 bash scripts/gpu_check_bert.sh model.train_layers=-1 model.max_fresh_items=4096
#
# Environment: DATA (folder with Scientific.inter/.item; default ../shared/data/amazon-scientific),
# OUT (where metrics.json and the log are copied; default /tmp), EPOCHS (1),
# PYTHON (.venv/bin/python when present). Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DATA=${DATA:-../shared/data/amazon-scientific}
RUN=/tmp/bert_gpu  # the run folder holds ~200 MB of checkpoints: only its metrics are copied
DEST=${OUT:-/tmp}
EPOCHS=${EPOCHS:-1}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
start=$(date +%s)
"$PY" train.py model=bert_finetune data=atomic data.path="$DATA" data.name=Scientific \
  trainer=gpu trainer.max_epochs="$EPOCHS" model.max_epochs=null trainer.enable_progress_bar=false \
  trainer.enable_model_summary=false hydra.run.dir="$RUN" "$@" > "$DEST/bert_gpu.log" 2>&1 \
  || { tail -40 "$DEST/bert_gpu.log"; exit 1; }
cp "$RUN/metrics.json" "$DEST/bert_gpu_metrics.json"
echo "wall seconds (with start-up, data loading and evaluation): $(( $(date +%s) - start ))"
"$PY" - "$RUN/metrics.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"bert_finetune on {m['data']}, trainer=gpu (bf16-mixed), {m['epochs']} epoch(s)")
print(f"seconds per epoch: {m['epoch_seconds']}  train_seconds: {m['train_seconds']}  "
      f"eval_seconds: {m['eval_seconds']}")
for key in ("test/ndcg@10", "test/recall@10", "test/tail_recall@10", "val/ndcg@10"):
    print(f"{key} = {m[key]:.4f}")
PYEOF
