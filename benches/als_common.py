"""The split and the metric recsys's ALS uses, for the ALS peers (`implicit`, Spark MLlib): per
user in time order the earliest 80 % of their listens train, the rest test; a test item is a
track the user never played in training; NDCG@10 over users with test items, training items
excluded from the ranking."""
import glob
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp


def split(lake, train_fraction=0.8):
    """(plays: users × items CSR of training play counts, item_ids, test: {user index: set of track ids})."""
    files = sorted(glob.glob(os.path.join(lake, "sorted", "listens", "*.parquet")))
    table = pa.concat_tables([pq.read_table(f, columns=["user_id", "track_id"]) for f in files])
    # Global order is already (ts, user, track, …): a stable sort by user keeps each user's
    # listens in time order, as recsys's split does.
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    tracks = table.column("track_id").to_numpy(zero_copy_only=False)
    order = np.argsort(users, kind="stable")
    users, tracks = users[order], tracks[order]
    _, user_idx, counts = np.unique(users, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_user = np.arange(len(users)) - starts[user_idx]
    train = rank_in_user < np.floor(train_fraction * counts[user_idx])
    item_ids, item_idx = np.unique(tracks[train], return_inverse=True)
    plays = sp.coo_matrix((np.ones(train.sum(), dtype=np.float32), (user_idx[train], item_idx)),
                          shape=(len(counts), len(item_ids))).tocsr()
    plays.sum_duplicates()
    train_tracks = {}
    for u, tr, is_train in zip(user_idx, tracks, train):
        if is_train:
            train_tracks.setdefault(u, set()).add(tr)
    test = {}
    for u, tr, is_train in zip(user_idx, tracks, train):
        if not is_train and tr not in train_tracks.get(u, ()):
            test.setdefault(u, set()).add(tr)
    return plays, item_ids, test


def ndcg_at_10(user_factors, item_factors, plays, item_ids, test):
    """Mean NDCG@10 of the factors over the test users (user and item rows as in `split`)."""
    item_pos = {t: i for i, t in enumerate(item_ids)}
    total, n = 0.0, 0
    for u, relevant_tracks in test.items():
        heard = plays.indices[plays.indptr[u]:plays.indptr[u + 1]]
        if len(heard) == 0:
            continue
        scores = item_factors @ user_factors[u]
        scores[heard] = -np.inf
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        relevant = {item_pos[t] for t in relevant_tracks if t in item_pos}
        dcg = sum(1.0 / math.log2(p + 2) for p, i in enumerate(top) if i in relevant)
        idcg = sum(1.0 / math.log2(p + 2) for p in range(min(len(relevant_tracks), 10)))
        total += dcg / idcg
        n += 1
    return total / max(n, 1), n
