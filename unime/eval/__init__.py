"""Evaluation: MMEB Precision@1, global image-text recall, aggregation and reports."""
