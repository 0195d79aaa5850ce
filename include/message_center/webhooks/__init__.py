"""Delivery-status webhooks: tell the pushing application what happened to its events,
signed (Standard Webhooks), retried, never lost.

* :mod:`message_center.webhook_outbox` - the transactional outbox, written by
  :mod:`message_center.state` in the statement that changes a status (and the hook for
  the tracking's ``event.opened`` / ``event.clicked``);
* :mod:`.model` - event names, subscription validation, secrets, the signed message;
* :mod:`.store` - subscriptions on the control instance and their copies, replay, the
  figures of the Webhooks page;
* :mod:`.dispatcher` - the sender (``mcWebhooks``).

Documentation: ``docs/webhooks.md``.
"""
