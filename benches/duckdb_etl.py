#!/usr/bin/env python3
"""DuckDB side of `recsys bench etl --duckdb`: the songs and users master data from the sorted
listens (Parquet folder), written to Parquet, with the same definitions as `recsys submit etl`
(plays, distinct listeners, plays in the last 7 days of the data, first/last played, the most
frequent spelling; per user plays, distinct tracks and artists, first/last seen, active days).
Prints JSON timings.

With EVENTS_DIR the plays come from the streamed events there instead (actions `listen` and
`complete`; durations only when positive; songs with titles but no plays kept), as `recsys
submit etl --source events` reads them; the titles still come from the sorted listens. `recsys
bench etl` runs it without; `recsys bench orchestrate` with, before and after compaction.

usage: duckdb_etl.py SORTED_DIR SCRATCH_DIR THREADS [EVENTS_DIR]   (needs `pip install duckdb`)
"""
import json
import os
import sys
import time

import duckdb

sorted_dir, scratch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET TimeZone = 'UTC'")
src = f"read_parquet('{sorted_dir}/*.parquet')"
if len(sys.argv) > 4:
    plays = f"""(SELECT user_id, track_id, artist_id, ts,
                       CASE WHEN total_duration_s > 0 THEN total_duration_s END AS total
                FROM read_parquet('{sys.argv[4]}/**/*.parquet')
                WHERE action IN ('listen', 'complete'))"""
    duration, join = ", max(total) AS duration_s", "FULL JOIN"
else:
    plays, duration, join = src, "", "JOIN"

t = time.perf_counter()
con.execute(f"""
COPY (
  WITH anchor AS (SELECT max(ts) - INTERVAL 7 DAY AS since FROM {plays}),
  stats AS (
    SELECT track_id, count(*) AS plays,
           count(*) FILTER (WHERE ts >= (SELECT since FROM anchor)) AS plays_7d,
           count(DISTINCT user_id) AS listeners, min(ts) AS first_played, max(ts) AS last_played
           {duration}
    FROM {plays} GROUP BY track_id),
  spellings AS (
    SELECT track_id, track_name, artist_name, artist_id, count(*) AS n
    FROM {src} GROUP BY ALL),
  names AS (
    SELECT track_id,
           arg_max(track_name, n) AS track_name, arg_max(artist_name, n) AS artist_name,
           arg_max(artist_id, n) AS artist_id
    FROM spellings GROUP BY track_id)
  SELECT * FROM stats {join} names USING (track_id)
) TO '{scratch}/songs.parquet' (FORMAT parquet, COMPRESSION zstd)
""")
songs_s = time.perf_counter() - t

t = time.perf_counter()
con.execute(f"""
COPY (
  SELECT user_id, count(*) AS plays, count(DISTINCT track_id) AS distinct_tracks,
         count(DISTINCT artist_id) AS distinct_artists, min(ts) AS first_seen, max(ts) AS last_seen,
         count(DISTINCT date_trunc('day', ts)) AS active_days
  FROM {plays} GROUP BY user_id
) TO '{scratch}/users.parquet' (FORMAT parquet, COMPRESSION zstd)
""")
users_s = time.perf_counter() - t
songs = con.execute(f"SELECT count(*) FROM '{scratch}/songs.parquet'").fetchone()[0]
users = con.execute(f"SELECT count(*) FROM '{scratch}/users.parquet'").fetchone()[0]
print(json.dumps({"peer": f"DuckDB {duckdb.__version__} ({threads} threads)", "songs_s": songs_s, "users_s": users_s, "songs": songs, "users": users}))
