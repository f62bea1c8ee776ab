#!/usr/bin/env python3
"""DuckDB side of `recsys bench pipeline --duckdb`: clean a Last.fm TSV into Parquet, then sort it
by (timestamp, user, track) into Parquet, with the given thread count. Prints JSON timings.

usage: duckdb_clean_sort.py FILE.tsv SCRATCH_DIR THREADS   (needs `pip install duckdb`)
"""
import json
import os
import sys
import time

import duckdb

tsv, scratch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
clean = os.path.join(scratch, "clean.parquet")
sorted_ = os.path.join(scratch, "sorted.parquet")
con = duckdb.connect()
con.execute(f"SET threads = {threads}")

t = time.perf_counter()
con.execute(f"""
COPY (
  SELECT column0 AS user_id,
         TRY_CAST(column1 AS TIMESTAMPTZ) AS ts,
         column2 AS artist_id, column3 AS artist_name,
         column4 AS track_id, column5 AS track_name
  FROM read_csv('{tsv}', delim='\t', header=false, quote='', escape='', all_varchar=true,
                null_padding=false, ignore_errors=true, auto_detect=false, strict_mode=false,
                columns={{'column0':'VARCHAR','column1':'VARCHAR','column2':'VARCHAR',
                          'column3':'VARCHAR','column4':'VARCHAR','column5':'VARCHAR'}})
  WHERE column0 <> '' AND TRY_CAST(column1 AS TIMESTAMPTZ) IS NOT NULL
) TO '{clean}' (FORMAT parquet, COMPRESSION zstd)
""")
clean_s = time.perf_counter() - t

t = time.perf_counter()
con.execute(f"COPY (SELECT * FROM '{clean}' ORDER BY ts, user_id, track_id) TO '{sorted_}' (FORMAT parquet, COMPRESSION zstd)")
sort_s = time.perf_counter() - t
rows = con.execute(f"SELECT count(*) FROM '{sorted_}'").fetchone()[0]
print(json.dumps({"peer": f"DuckDB {duckdb.__version__} ({threads} threads)", "clean_s": clean_s, "sort_s": sort_s, "rows": rows}))
