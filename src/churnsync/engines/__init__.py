"""Execution engines: DuckDB on one machine (the default, in the stage packages) or Apache Spark (:mod:`.spark`).

Importing this package imports neither PySpark nor sqlglot: both are the optional ``spark`` extra.
"""
