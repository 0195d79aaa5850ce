"""Operating the queue by hand: bulk actions by filter (cancel, retry, replay) and the
(:mod:`.filters`, :mod:`.actions`); their audit rows: :mod:`message_center.audit`."""
