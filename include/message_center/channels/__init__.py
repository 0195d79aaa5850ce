"""The built-in delivery channels, one module each (e-mail, SMS, ...).

Every module of this package that defines ``CHANNEL`` is registered by
:mod:`message_center.channel` (the interface and the registry) at its first lookup:
adding a module here adds a channel. Nothing else in the domain imports these modules.
"""
