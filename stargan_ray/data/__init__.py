"""Data: folder trees, the embedded synthetic set, Parquet shards, the Ray Data pipeline."""
