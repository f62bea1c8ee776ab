"""Shared set-up of the Spark peers: a `local[THREADS]` session started outside the timings, as
a Spark user would run these jobs on one machine (adaptive execution on, zstd Parquet, 8 GB of
driver memory: local mode runs everything in the driver). Shuffles keep Spark's default 200
partitions, which adaptive execution coalesces: fewer (one per thread) ran out of heap sorting
20 M rows."""
import os
import time


def session(threads, app):
    os.environ.setdefault("PYSPARK_PYTHON", os.sys.executable)
    from pyspark.sql import SparkSession

    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName(app)
        .config("spark.driver.memory", "8g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    # The JVM's first query compiles and loads most of Spark SQL: run one outside the timings.
    spark.range(1000).selectExpr("sum(id)").collect()
    return spark, time.perf_counter() - started
