"""The table store: every table's columns (`schema`), Parquet partitions per round (`base.Store`, opened with
`factory.open_store`) under a local directory (`local`) or an S3 prefix (`s3`), round locks (`locks`), atomic
file writes (`atomic`), and the DuckDB catalog of views over them (`catalog`). See docs/data-model.md."""
