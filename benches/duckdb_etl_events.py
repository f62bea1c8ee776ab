#!/usr/bin/env python3
"""DuckDB computing the ETL's songs and users tables from a lake's streamed events (plays =
actions `listen` and `complete`; durations only when positive) with the titles from the sorted
listens, as `recsys submit etl --source events` does. Not wired into `recsys bench`: run it
beside `recsys submit etl --object-store LAKE --source events --no-load --vcores 2` on the same
lake (docs/performance.md, *Catalog ETL*). Prints the seconds, the songs and the plays counted.

usage: duckdb_etl_events.py LAKE_DIR SCRATCH_DIR THREADS   (needs `pip install duckdb`)
"""
import sys
import time

import duckdb

lake, scratch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET TimeZone = 'UTC'")
events = f"read_parquet('{lake}/events/**/*.parquet')"
listens = f"read_parquet('{lake}/sorted/listens/*.parquet')"

t = time.perf_counter()
con.execute(f"""
CREATE TEMP VIEW plays AS
SELECT user_id, track_id, artist_id, ts,
       CASE WHEN total_duration_s > 0 THEN total_duration_s END AS total
FROM {events} WHERE action IN ('listen', 'complete')
""")
con.execute(f"""
COPY (
  WITH anchor AS (SELECT max(ts) - INTERVAL 7 DAY AS since FROM plays),
  stats AS (
    SELECT track_id, count(*) AS plays,
           count(*) FILTER (WHERE ts >= (SELECT since FROM anchor)) AS plays_7d,
           count(DISTINCT user_id) AS listeners, min(ts) AS first_played,
           max(ts) AS last_played, max(total) AS duration_s
    FROM plays GROUP BY track_id),
  spellings AS (
    SELECT track_id, track_name, artist_name, artist_id, count(*) AS n
    FROM {listens} GROUP BY ALL),
  names AS (
    SELECT track_id, arg_max(track_name, n) AS track_name,
           arg_max(artist_name, n) AS artist_name, arg_max(artist_id, n) AS artist_id
    FROM spellings GROUP BY track_id)
  SELECT * FROM stats FULL JOIN names USING (track_id)
) TO '{scratch}/songs.parquet' (FORMAT parquet, COMPRESSION zstd)
""")
con.execute(f"""
COPY (
  SELECT user_id, count(*) AS plays, count(DISTINCT track_id) AS distinct_tracks,
         count(DISTINCT artist_id) AS distinct_artists, min(ts) AS first_seen,
         max(ts) AS last_seen, count(DISTINCT date_trunc('day', ts)) AS active_days
  FROM plays GROUP BY user_id
) TO '{scratch}/users.parquet' (FORMAT parquet, COMPRESSION zstd)
""")
secs = time.perf_counter() - t
songs = con.execute(f"SELECT count(*) FROM '{scratch}/songs.parquet'").fetchone()[0]
plays = con.execute(f"SELECT sum(plays) FROM '{scratch}/users.parquet'").fetchone()[0]
print(f"DuckDB {duckdb.__version__} ({threads} threads): {secs:.2f} s, {songs} songs, {plays} plays")
