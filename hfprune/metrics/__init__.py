"""Metric scripts for `evaluate`, loaded by file path (see `hfprune.glue.glue_metric`) so they work offline."""
