"""Benchmark suite of the Message Center: ``make bench`` (``python -m bench.run``).

Builds its own data on the embedded PostgreSQL (profile ``bench``: databases
``bench_*``), starts what a stage needs (SMTP sinks, the Airflow API server, Airflow
standalone for the real-scheduler stages), runs each stage next to its *bare limit*
measured in the same run on the same machine, and prints one table. It asserts nothing:
figures are for people, the test suite only checks that the harness runs.
"""
