"""Local tooling around the Message Center: the ``mc`` command, the local deployment
(embedded PostgreSQL, launcher, environment), the SMTP and SMS sinks and the Python push
client. Never imported by the domain (:mod:`message_center`) or the Airflow adapter
(:mod:`mc_airflow`); it may import both."""
