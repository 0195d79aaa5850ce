"""The Airflow adapter: what the DAG files and plugins use to run the domain.

Connections turned into plain settings and URLs, params, default args, publishing
topology, the ``airflow_settings.yaml`` loader. It may import :mod:`message_center`
(never the other way) and never imports :mod:`mc_local`; DAG files import only
:mod:`mc_airflow.defaults` and :mod:`mc_airflow.params` at parse time.
"""
