"""scikit-learn's IsolationForest on the same CSV as `iforest_bench` (issue 14): ROC-AUC and
fit+score time, 100 trees of 256 samples, random_state 0..29, one thread. Prints one JSON line.

  python3 iforest_sklearn.py --data FILE.csv     # last column `label`, 1 = anomaly
  python3 iforest_sklearn.py --make-wbc FILE.csv # the WBC set: scikit-learn's bundled breast
                                                 # cancer data, all 357 benign and 21 malignant
                                                 # drawn with seed 0 (as in the ODDS benchmark)
"""
import argparse
import json
import statistics
import time

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score

p = argparse.ArgumentParser()
p.add_argument("--data")
p.add_argument("--make-wbc")
a = p.parse_args()

if a.make_wbc:
    d = load_breast_cancer()
    benign = d.data[d.target == 1]
    malignant = d.data[d.target == 0]
    pick = np.random.default_rng(0).choice(len(malignant), 21, replace=False)
    x = np.vstack([benign, malignant[pick]])
    y = np.concatenate([np.zeros(len(benign)), np.ones(21)])
    names = [n.replace(" ", "_") for n in d.feature_names]
    with open(a.make_wbc, "w") as f:
        f.write(",".join(names) + ",label\n")
        for row, label in zip(x, y):
            f.write(",".join(repr(float(v)) for v in row) + f",{int(label)}\n")
    raise SystemExit(0)

data = np.loadtxt(a.data, delimiter=",", skiprows=1)
x, y = data[:, :-1], data[:, -1]
aucs, times = [], []
for seed in range(30):
    t = time.perf_counter()
    m = IsolationForest(n_estimators=100, max_samples=256, random_state=seed, n_jobs=1).fit(x)
    s = -m.score_samples(x)
    times.append((time.perf_counter() - t) * 1e3)
    aucs.append(roc_auc_score(y, s))
print(json.dumps({
    "impl": "scikit-learn",
    "data": a.data,
    "rows": int(len(x)),
    "auc_mean": round(statistics.mean(aucs), 4),
    "auc_min": round(min(aucs), 4),
    "auc_max": round(max(aucs), 4),
    "fit_score_ms_p50": round(statistics.median(times), 2),
}))
