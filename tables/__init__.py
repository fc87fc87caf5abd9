"""Faust tables: state co-partitioned with the streams that update it."""
