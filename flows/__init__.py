"""Prefect flows: prepare_data (download → Parquet shards); train and evaluate come later."""
