#!/usr/bin/env bash
# Issue 14: the transaction optimiser's models against their named peers, in one run.
#  1. priority queue vs FIFO: high-priority latency on a seeded open-loop Poisson trace
#     through a real node (crates/node/examples/priority_bench.rs), with Cobham's formula
#  2. random forest vs logistic regression on the same splits of those transactions
#     (crates/ai/examples/classifier_bench.rs)
#  3. the arrival forecaster, an LSTM vs an EWMA (crates/ai/examples/forecast_bench.rs)
#     and the batch size it drives vs fixed batches (crates/node/examples/batch_bench.rs)
#  4. isolation forest vs scikit-learn's IsolationForest (100 trees, 256 samples): ROC-AUC
#     and fit+score time on the WBC set and on the transactions of run 1 with injected
#     anomalies (crates/ai/examples/iforest_bench.rs, bench/iforest_sklearn.py)
# Knobs: PRIO_TXS (4000), PRIO_RUNS (10), PRIO_LOADS (0.5,0.8,0.95,1.1), PRIO_BATCH (1).
set -euo pipefail
cd "$(dirname "$0")/.."
examples=(-p micro-os-node --example priority_bench --example batch_bench -p micro-os-ai --example iforest_bench --example classifier_bench --example forecast_bench)
cargo build --release --locked "${examples[@]}" >/dev/null 2>&1 || cargo build --release --locked "${examples[@]}"
VENV=${VENV:-/tmp/micro-os-bench-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import sklearn' 2>/dev/null || "$VENV/bin/pip" install -q scikit-learn numpy
WORK=$(mktemp -d /tmp/micro-os-ai-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
echo
echo "## priority queue vs FIFO"
target/release/examples/priority_bench --txs "${PRIO_TXS:-4000}" --runs "${PRIO_RUNS:-10}" \
  --loads "${PRIO_LOADS:-0.5,0.8,0.95,1.1}" --batch "${PRIO_BATCH:-1}" --features-out "$WORK/chain.csv"
echo
echo "## random forest vs logistic regression (the payments above, labelled by fee-rate quantiles)"
target/release/examples/classifier_bench "$WORK/chain.csv"
echo
echo "## the arrival forecaster: LSTM vs EWMA, one step ahead"
target/release/examples/forecast_bench --seconds "${FORECAST_SECONDS:-3000}"
echo
echo "## the forecast's batch size vs fixed batches, on bursty arrivals"
target/release/examples/batch_bench --tick-ms 20
echo
echo "## isolation forest vs scikit-learn"
"$VENV/bin/python" bench/iforest_sklearn.py --make-wbc "$WORK/wbc.csv"
for data in wbc chain; do
  if [ "$data" = chain ]; then
    ours=$(target/release/examples/iforest_bench --inject "$WORK/chain.csv" --out "$WORK/chain_eval.csv")
    file=$WORK/chain_eval.csv
  else
    file=$WORK/wbc.csv
    ours=$(target/release/examples/iforest_bench --data "$file")
  fi
  peer=$("$VENV/bin/python" bench/iforest_sklearn.py --data "$file")
  echo "$ours"
  echo "$peer"
  python3 - "$data" "$ours" "$peer" <<'PY'
import json, sys
name, ours, peer = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{name}: AUC ours {ours['auc_mean']:.4f} ({ours['auc_min']:.4f}-{ours['auc_max']:.4f}) vs scikit-learn "
      f"{peer['auc_mean']:.4f} ({peer['auc_min']:.4f}-{peer['auc_max']:.4f}), difference {ours['auc_mean'] - peer['auc_mean']:+.4f}; "
      f"fit+score p50 {ours['fit_score_ms_p50']:.1f} ms vs {peer['fit_score_ms_p50']:.1f} ms, "
      f"time ratio ours/peer {ours['fit_score_ms_p50'] / peer['fit_score_ms_p50']:.3f}")
PY
done
