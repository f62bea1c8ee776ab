#!/usr/bin/env python3
"""Spark MLlib side of `recsys bench als`: implicit ALS on the same time split as recsys, with
the same metric, on `local[THREADS]`. Spark's confidence is linear (c = 1 + α·r), so it is given
r = ln(1 + plays), which makes it recsys's default log form; its λ is scaled by each row's
count, as recsys's default. Seconds per iteration are the difference between a fit of
ITERATIONS + 1 iterations and a fit of one, divided by ITERATIONS (so Spark's per-fit set-up,
the data shuffle into blocks, is not counted, as recsys's preparation is not).

usage: spark_als.py LAKE_DIR FACTORS ITERATIONS REG ALPHA THREADS   (needs pyspark and Java 17)
"""
import json
import sys
import time

import numpy as np

from als_common import ndcg_at_10, split
from spark_common import session

lake, factors, iterations, reg, alpha, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
plays, item_ids, test = split(lake)
coo = plays.tocoo()
spark, startup_s = session(threads, "recsys-bench-als")
from pyspark.ml.recommendation import ALS

ratings = spark.createDataFrame(
    list(zip(coo.row.tolist(), coo.col.tolist(), np.log1p(coo.data).tolist())), ["user", "item", "rating"]
).repartition(threads).cache()
ratings.count()


def fit(iters):
    als = ALS(rank=factors, maxIter=iters, regParam=reg, alpha=alpha, implicitPrefs=True, userCol="user",
              itemCol="item", ratingCol="rating", seed=42, numUserBlocks=threads, numItemBlocks=threads)
    t = time.perf_counter()
    model = als.fit(ratings)
    model.userFactors.count()  # fit is lazy in parts: force the factors
    return model, time.perf_counter() - t


_, one = fit(1)
model, many = fit(iterations + 1)
per_iteration = (many - one) / iterations


def dense(df, n):
    out = np.zeros((n, factors), dtype=np.float32)
    for row in df.collect():
        out[row["id"]] = row["features"]
    return out


user_factors = dense(model.userFactors, plays.shape[0])
item_factors = dense(model.itemFactors, plays.shape[1])
ndcg, users = ndcg_at_10(user_factors, item_factors, plays, item_ids, test)
import pyspark

print(json.dumps({"peer": f"Spark MLlib {pyspark.__version__} local[{threads}]", "startup_s": startup_s,
                  "seconds_per_iteration": per_iteration, "first_fit_s": one, "ndcg_at_10": ndcg, "users": users}))
