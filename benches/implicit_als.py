#!/usr/bin/env python3
"""`implicit` side of `recsys bench als --implicit`: the same time split and the same metric as
recsys, on the lake's sorted listens, with the `implicit` library's CPU ALS (conjugate gradient).

usage: implicit_als.py LAKE_DIR FACTORS ITERATIONS REG ALPHA THREADS
needs: pip install implicit pyarrow (numpy, scipy come with them)
"""
import glob
import json
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

lake, factors, iterations, reg, alpha, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
files = sorted(glob.glob(os.path.join(lake, "sorted", "listens", "*.parquet")))
table = pq.ParquetFile(files[0]).read() if len(files) == 1 else __import__("pyarrow").concat_tables([pq.read_table(f) for f in files])
# Global order is already (ts, user, track, artist id, artist name, track name): a stable sort by
# user keeps each user's listens in time order, as recsys's split does.
users = table.column("user_id").to_numpy(zero_copy_only=False)
tracks = table.column("track_id").to_numpy(zero_copy_only=False)
order = np.argsort(users, kind="stable")
users, tracks = users[order], tracks[order]
uniq_users, user_idx, counts = np.unique(users, return_inverse=True, return_counts=True)
starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
rank_in_user = np.arange(len(users)) - starts[user_idx]
cut = np.floor(0.8 * counts[user_idx])
train = rank_in_user < cut
item_ids, item_idx = np.unique(tracks[train], return_inverse=True)
n_users, n_items = len(uniq_users), len(item_ids)
plays = sp.coo_matrix((np.ones(train.sum(), dtype=np.float32), (user_idx[train], item_idx)), shape=(n_users, n_items)).tocsr()
plays.sum_duplicates()
confidence = plays.copy()
confidence.data = 1.0 + alpha * confidence.data
model = AlternatingLeastSquares(factors=factors, regularization=reg, iterations=1, calculate_training_loss=False,
                                num_threads=threads, random_state=42, use_cg=True)
model.fit(confidence, show_progress=False)  # warm up (allocations, thread pool)
model = AlternatingLeastSquares(factors=factors, regularization=reg, iterations=iterations, calculate_training_loss=False,
                                num_threads=threads, random_state=42, use_cg=True)
t = time.perf_counter()
model.fit(confidence, show_progress=False)
seconds = time.perf_counter() - t

# Test items: tracks a user played after the cut and never before it.
item_pos = {t: i for i, t in enumerate(item_ids)}
test = {}
train_sets = [set(plays.indices[plays.indptr[u]:plays.indptr[u + 1]]) for u in range(n_users)]
train_tracks = {}
for u, tr, is_train in zip(user_idx, tracks, train):
    if is_train:
        train_tracks.setdefault(u, set()).add(tr)
for u, tr, is_train in zip(user_idx, tracks, train):
    if not is_train and tr not in train_tracks.get(u, ()):
        test.setdefault(u, set()).add(tr)
ndcg_sum, users_eval = 0.0, 0
for u, relevant_tracks in test.items():
    if not train_sets[u]:
        continue
    scores = model.item_factors @ model.user_factors[u]
    scores[list(train_sets[u])] = -np.inf
    top = np.argpartition(-scores, 10)[:10]
    top = top[np.argsort(-scores[top])]
    relevant = {item_pos[t] for t in relevant_tracks if t in item_pos}
    dcg = sum(1.0 / math.log2(p + 2) for p, i in enumerate(top) if i in relevant)
    idcg = sum(1.0 / math.log2(p + 2) for p in range(min(len(relevant_tracks), 10)))
    ndcg_sum += dcg / idcg
    users_eval += 1
print(json.dumps({"seconds_per_iteration": seconds / iterations, "ndcg_at_10": ndcg_sum / max(users_eval, 1),
                  "users": users_eval, "items": n_items, "pairs": int(plays.nnz)}))
