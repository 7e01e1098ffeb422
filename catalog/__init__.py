"""The build catalog (DuckDB): builds, stage runs, shards, rejections."""
