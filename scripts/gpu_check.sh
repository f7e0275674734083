#!/usr/bin/env bash
# GPU check of recozoo (issue 9): run ONCE on a lent GPU machine; about 3-4 minutes.
#
#   device run: command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=420
#
# The device image has torch, lightning, torchmetrics, pandas and pyarrow but not Hydra: .whl/
# (ignored by git) holds hydra-core 1.3.8, omegaconf 2.3.1 and antlr4-python3-runtime 4.9.3
# wheels; refill it with `python3 -m pip download --no-deps --only-binary=:all: --python-version
# 3.12 -d .whl hydra-core==1.3.8 omegaconf==2.3.1` and `pip wheel --no-deps -w .whl
# antlr4-python3-runtime==4.9.3`.
#
# What it prints: for bpr and sasrec (when conf/model/sasrec.yaml exists), 2 epochs each on the
# default shop with trainer=gpu (bf16 mixed precision): seconds per epoch, test NDCG@10, test
# users scored per second; then the evaluation throughput of the real evaluation path
# (Recommender._evaluate: full-catalogue scores, masking, top-100, metric updates) for a
# 100k-item catalogue. A dry run on CPU: GPU_CHECK_TRAINER=cpu bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TRAINER=${GPU_CHECK_TRAINER:-gpu}
RESULTS=${OUT:-/tmp/gpu_check}
mkdir -p "$RESULTS"
if ! $PY -c "import hydra" 2>/dev/null && [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu_check_site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

$PY - "$TRAINER" <<'PYEOF' || exit 1
import sys, torch, lightning, hydra
print(f"torch {torch.__version__}, lightning {lightning.__version__}, hydra {hydra.__version__}")
if sys.argv[1] == "gpu":
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")
    print("device:", torch.cuda.get_device_name(0), f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PYEOF

for model in bpr sasrec; do
  [ -f "conf/model/$model.yaml" ] || { echo "$model: conf/model/$model.yaml absent, skipped"; continue; }
  start=$(date +%s)
  timeout 150 $PY train.py model=$model trainer=$TRAINER trainer.max_epochs=2 \
    trainer.enable_progress_bar=false trainer.enable_model_summary=false logger=csv \
    hydra.run.dir="/tmp/gpu_check_runs/$model" paths.cache_dir=/tmp/gpu_check_cache \
    'hydra.callbacks={}' > "$RESULTS/$model.log" 2>&1
  status=$?
  cp "/tmp/gpu_check_runs/$model/metrics.json" "$RESULTS/${model}_metrics.json" 2>/dev/null
  echo "$model: exit $status after $(( $(date +%s) - start ))s (log: $model.log)"
  $PY - "/tmp/gpu_check_runs/$model/metrics.json" <<'PYEOF'
import json, sys
try:
    m = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("  no metrics.json")
if m.get("status") != "ok":
    sys.exit(f"  failed: {m.get('error')}")
users = m["n_users"]
print(f"  seconds per epoch {m['epoch_seconds']}, test NDCG@10 {m['test/ndcg@10']:.4f}, "
      f"Recall@10 {m['test/recall@10']:.4f}, test eval {m['eval_seconds']}s "
      f"(~{users / max(m['eval_seconds'], 1e-9):,.0f} users/s for {users} users, "
      f"{m['n_items']} items)")
PYEOF
done

timeout 120 $PY - <<'PYEOF'
"""Evaluation throughput of the real path on a 100k-item catalogue (BPR scores, d=64)."""
import time, torch
from recozoo.data.datamodule import DatasetInfo, EvalBatch
from recozoo.models.bpr import BPR

device = "cuda" if torch.cuda.is_available() else "cpu"
n_users, n_items, batch, history = 200_000, 100_000, 4096, 50
popularity = torch.rand(n_items) * 100
info = DatasetInfo(name="synthetic", n_users=n_users, n_items=n_items, item_popularity=popularity,
                   tail_mask=popularity < 80, head_share=0.2)
model = BPR(info, embedding_dim=64).to(device).eval()
g = torch.Generator().manual_seed(0)

def make_batch(start):
    rows = torch.arange(batch).repeat_interleave(history)
    parts = dict(user=torch.arange(start, start + batch),
                 history=torch.randint(0, n_items, (batch, history), generator=g),
                 seen_rows=rows, seen_cols=torch.randint(0, n_items, (len(rows),), generator=g),
                 target_rows=torch.arange(batch),
                 target_cols=torch.randint(0, n_items, (batch,), generator=g))
    return EvalBatch(**{k: v.to(device) for k, v in parts.items()})

batches = [make_batch(i * batch) for i in range(12 if device == "cuda" else 2)]
with torch.no_grad():
    model._evaluate(batches[0], "test")  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[1:]:
        model._evaluate(b, "test")
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    ndcg = model.test_metrics["ndcg@10"].compute().item()
users = batch * (len(batches) - 1)
print(f"eval throughput on {device}: {users / elapsed:,.0f} users/s "
      f"({users} users x {n_items} items, batch {batch}, top-{model.top_n}; "
      f"random NDCG@10 {ndcg:.5f})")
PYEOF
echo "gpu_check done"
