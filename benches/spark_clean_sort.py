#!/usr/bin/env python3
"""Spark side of `recsys bench pipeline`: clean a Last.fm TSV into Parquet (malformed lines to a
rejects table with their reason), then sort the clean rows by (timestamp, user, track) into
Parquet, on `local[THREADS]`. Prints JSON timings.

The same checks as recsys's clean, in Spark SQL: six tab-separated fields, a user, an ISO-8601
timestamp in 1990-2100, a track MBID or title; missing MBIDs are replaced by a hash of the
normalised names (recsys uses UUIDv5, which Spark lacks). Unlike recsys, rejects carry no line
number (Spark's readers do not know it) and bad UTF-8 is not detected.

The checked rows are not cached between the rejects and the clean output: a cache of 20 M rows
with their split fields ran out of 8 GB of heap, so Spark reads the text twice.

usage: spark_clean_sort.py FILE.tsv SCRATCH_DIR THREADS   (needs pyspark and Java 17)
"""
import json
import os
import sys
import time

from spark_common import session

tsv, scratch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
spark, startup_s = session(threads, "recsys-bench-clean-sort")
clean_dir = os.path.join(scratch, "clean")
rejects_dir = os.path.join(scratch, "rejects")
sorted_dir = os.path.join(scratch, "sorted")

t = time.perf_counter()
spark.read.option("lineSep", "\n").text(tsv).createOrReplaceTempView("raw")
spark.sql("""
  SELECT value, split(value, '\t', -1) AS f FROM raw
""").createOrReplaceTempView("split")
spark.sql("""
  SELECT value, f, try_to_timestamp(get(f, 1)) AS ts,
    CASE
      WHEN instr(TRIM(TRAILING '\r' FROM value), '\r') > 0 THEN 'stray_cr'
      WHEN size(f) <> 6 THEN 'field_count'
      WHEN get(f, 0) = '' THEN 'empty_user'
      WHEN try_to_timestamp(get(f, 1)) IS NULL THEN 'bad_timestamp'
      WHEN year(try_to_timestamp(get(f, 1))) NOT BETWEEN 1990 AND 2100 THEN 'timestamp_out_of_range'
      WHEN get(f, 4) = '' AND TRIM(TRAILING '\r' FROM get(f, 5)) = '' THEN 'missing_track'
    END AS reason
  FROM split
""").createOrReplaceTempView("checked")
spark.sql("SELECT reason, value AS text FROM checked WHERE reason IS NOT NULL") \
    .write.mode("overwrite").parquet(rejects_dir)
spark.sql("""
  SELECT get(f, 0) AS user_id, ts,
    coalesce(nullif(get(f, 2), ''), sha2(lower(trim(get(f, 3))), 256)) AS artist_id, get(f, 3) AS artist_name,
    coalesce(nullif(get(f, 4), ''), sha2(concat(lower(trim(get(f, 3))), '\u001f', lower(trim(TRIM(TRAILING '\r' FROM get(f, 5))))), 256)) AS track_id,
    TRIM(TRAILING '\r' FROM get(f, 5)) AS track_name
  FROM checked WHERE reason IS NULL
""").write.mode("overwrite").parquet(clean_dir)
clean_s = time.perf_counter() - t

t = time.perf_counter()
spark.read.parquet(clean_dir).orderBy("ts", "user_id", "track_id", "artist_id", "artist_name", "track_name") \
    .write.mode("overwrite").parquet(sorted_dir)
sort_s = time.perf_counter() - t

rows = spark.read.parquet(sorted_dir).count()
rejected = spark.read.parquet(rejects_dir).count()
import pyspark

print(json.dumps({"peer": f"Spark {pyspark.__version__} local[{threads}]", "startup_s": startup_s,
                  "clean_s": clean_s, "sort_s": sort_s, "rows": rows, "rejected": rejected}))
