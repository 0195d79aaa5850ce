"""Tracking of e-mail messages: what a template opts into, the signed tokens of its public
URLs, the rewriting of a rendered message (tracked links, open pixel, mirror and
unsubscribe URLs) and the recording of hits.

The tracking server (:mod:`message_center.tracking_server`) answers the URLs; the e-mail
channel calls :func:`message_center.tracking.links.track_message` at render time. Nothing
here names a channel: a channel that supports tracking says so (``Channel.tracks``).
"""
