"""Delivery: the ledger (exactly-once sends), the channels (SMTP, SMS gateway), outcomes.

The package never imports Airflow: connection settings arrive as plain dataclasses
(:class:`~message_center.delivery.smtp.SmtpSettings`,
:class:`~message_center.delivery.sms.SmsSettings`) built by ``mc_airflow.delivery``.
"""
