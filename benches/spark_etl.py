#!/usr/bin/env python3
"""Spark side of `recsys bench etl`: the songs and users master data from the sorted listens
(Parquet folder), written to Parquet, with the same definitions as `recsys submit etl` (plays,
distinct listeners, plays in the last 7 days of the data, first/last played, the most frequent
spelling; per user plays, distinct tracks and artists, first/last seen, active days), on
`local[THREADS]`. Prints JSON timings.

usage: spark_etl.py SORTED_DIR SCRATCH_DIR THREADS   (needs pyspark and Java 17)
"""
import json
import os
import sys
import time

from spark_common import session

sorted_dir, scratch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
spark, startup_s = session(threads, "recsys-bench-etl")

t = time.perf_counter()
spark.read.parquet(sorted_dir).createOrReplaceTempView("listens")
spark.sql("""
  WITH anchor AS (SELECT max(ts) - INTERVAL 7 DAYS AS since FROM listens),
  stats AS (
    SELECT track_id, count(*) AS plays,
           count_if(ts >= (SELECT since FROM anchor)) AS plays_7d,
           count(DISTINCT user_id) AS listeners, min(ts) AS first_played, max(ts) AS last_played
    FROM listens GROUP BY track_id),
  spellings AS (
    SELECT track_id, track_name, artist_name, artist_id, count(*) AS n
    FROM listens GROUP BY track_id, track_name, artist_name, artist_id),
  names AS (
    SELECT track_id, max_by(struct(track_name, artist_name, artist_id), n) AS s
    FROM spellings GROUP BY track_id)
  SELECT stats.*, s.track_name, s.artist_name, s.artist_id FROM stats JOIN names USING (track_id)
""").write.mode("overwrite").parquet(os.path.join(scratch, "songs"))
songs_s = time.perf_counter() - t

t = time.perf_counter()
spark.sql("""
  SELECT user_id, count(*) AS plays, count(DISTINCT track_id) AS distinct_tracks,
         count(DISTINCT artist_id) AS distinct_artists, min(ts) AS first_seen, max(ts) AS last_seen,
         count(DISTINCT to_date(ts)) AS active_days
  FROM listens GROUP BY user_id
""").write.mode("overwrite").parquet(os.path.join(scratch, "users"))
users_s = time.perf_counter() - t

songs = spark.read.parquet(os.path.join(scratch, "songs")).count()
users = spark.read.parquet(os.path.join(scratch, "users")).count()
import pyspark

print(json.dumps({"peer": f"Spark {pyspark.__version__} local[{threads}]", "startup_s": startup_s,
                  "songs_s": songs_s, "users_s": users_s, "songs": songs, "users": users}))
