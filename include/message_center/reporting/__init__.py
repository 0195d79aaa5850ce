"""Message Center reporting on the control instance (ACC's Message Center reports).

* :mod:`.statistics` - hourly event statistics, rebuilt from the archive by the archiving
  runs;
* :mod:`.reports` - the service level, processing time and event history reports, and the
  events behind one error cause;
* :mod:`.thresholds` - ACC's warning / alert options and the classification of a value;
* :mod:`.live` - live figures of one execution instance (queues, sent in the last hour).

Domain code: no Airflow import; every function takes a SQLAlchemy connection.
"""
