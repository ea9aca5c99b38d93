"""The table store: every table's columns (`schema`), Parquet partitions per round under a local
directory or an S3 prefix, round locks, and the DuckDB catalog of views over them (`catalog`)."""
