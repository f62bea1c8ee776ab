#!/usr/bin/env python3
"""`implicit` side of `recsys bench als`: the same time split and the same metric as recsys, on
the lake's sorted listens, with the `implicit` library's CPU ALS (conjugate gradient, fixed λ).
Confidence is recsys's default log form, c = 1 + α·ln(1 + plays).

usage: implicit_als.py LAKE_DIR FACTORS ITERATIONS REG ALPHA THREADS
needs: pip install implicit pyarrow (numpy, scipy come with them)
"""
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import implicit
import numpy as np
from implicit.cpu.als import AlternatingLeastSquares

from als_common import ndcg_at_10, split

lake, factors, iterations, reg, alpha, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
plays, item_ids, test = split(lake)
confidence = plays.copy()
confidence.data = 1.0 + alpha * np.log1p(confidence.data)


def model(iters):
    return AlternatingLeastSquares(factors=factors, regularization=reg, iterations=iters, calculate_training_loss=False,
                                   num_threads=threads, random_state=42, use_cg=True)


model(1).fit(confidence, show_progress=False)  # warm up (allocations, thread pool)
m = model(iterations)
t = time.perf_counter()
m.fit(confidence, show_progress=False)
seconds = time.perf_counter() - t
ndcg, users = ndcg_at_10(m.user_factors, m.item_factors, plays, item_ids, test)
print(json.dumps({"peer": f"implicit {implicit.__version__} ({threads} threads)", "seconds_per_iteration": seconds / iterations,
                  "ndcg_at_10": ndcg, "users": users, "items": len(item_ids), "pairs": int(plays.nnz)}))
