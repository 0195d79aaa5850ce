"""Message Center reporting on the control instance (ACC's Message Center reports).

* :mod:`.statistics` - hourly event statistics, rebuilt from the archive by the archiving
  runs;
* :mod:`.reports` - the service level, processing time and event history reports, and the
  events behind one error cause;
* :mod:`.thresholds` - ACC's warning / alert options and the classification of a value;
* :mod:`.live` - live figures of one execution instance (queues, sent in the last hour).

Domain code: no Airflow import; every function takes a SQLAlchemy connection.
"""

from message_center.reporting.live import InstanceLive, instance_live, read_instance_live
from message_center.reporting.reports import (
    ERROR_CAUSE_LABELS,
    ERROR_CAUSES,
    EventPage,
    HistoryReport,
    HistoryRow,
    ProcessingBucket,
    ProcessingTimeReport,
    ReportFilter,
    ReportFilterError,
    ServiceLevelBucket,
    ServiceLevelReport,
    error_events,
    event_history,
    history_csv,
    parse_filter,
    parse_period,
    processing_time,
    service_level,
)
from message_center.reporting.statistics import purge_statistics, refresh_statistics
from message_center.reporting.thresholds import (
    Indicator,
    Limit,
    ThresholdError,
    Thresholds,
    classify,
    health_limits,
    load_thresholds,
)
from message_center.reporting.tracking import (
    TrackingReport,
    refresh_tracking_statistics,
    tracking_csv,
    tracking_report,
)

__all__ = [
    "ERROR_CAUSES",
    "ERROR_CAUSE_LABELS",
    "EventPage",
    "HistoryReport",
    "HistoryRow",
    "Indicator",
    "InstanceLive",
    "Limit",
    "ProcessingBucket",
    "ProcessingTimeReport",
    "ReportFilter",
    "ReportFilterError",
    "ServiceLevelBucket",
    "ServiceLevelReport",
    "ThresholdError",
    "Thresholds",
    "TrackingReport",
    "classify",
    "error_events",
    "event_history",
    "health_limits",
    "history_csv",
    "instance_live",
    "load_thresholds",
    "parse_filter",
    "parse_period",
    "processing_time",
    "purge_statistics",
    "read_instance_live",
    "refresh_statistics",
    "refresh_tracking_statistics",
    "service_level",
    "tracking_csv",
    "tracking_report",
]
