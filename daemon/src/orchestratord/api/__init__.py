"""The HTTP layer of orchestratord: one router per resource, the error envelope and the
OpenAPI helpers.

* :mod:`~orchestratord.api.errors` — error envelope, correlation ids, bounded bodies;
* :mod:`~orchestratord.api.openapi` — declared errors and bodies, the served document;
* :mod:`~orchestratord.api.tasks` — ``/v2/tasks``: submit, list, status, cancel, events;
* :mod:`~orchestratord.api.pools` — ``/v2/pools``: register, heartbeat, unregister, views;
* :mod:`~orchestratord.api.scheduler` — ``/v2/scheduler``: the active policy, hot swap;
* :mod:`~orchestratord.api.ops` — ``/metrics``, ``/health``, ``/ready``.

Routes parse and authenticate, then call one application service; they hold no logic of
their own.
"""
