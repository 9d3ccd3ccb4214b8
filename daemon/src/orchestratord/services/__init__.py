"""The daemon's application services, one job per module.

* :mod:`~orchestratord.services.context` — what every service shares: the configuration,
  the store, the one model of the cluster, the table of live jobs, metrics, clock, tasks;
* :mod:`~orchestratord.services.cluster` — the one in-memory model of the cluster;
* :mod:`~orchestratord.services.jobs` — a live job and the table of live jobs;
* :mod:`~orchestratord.services.events` — a job's events: commit, then publish, in order;
* :mod:`~orchestratord.services.lifecycle` — the end of jobs, retries, stops, SSE clients;
* :mod:`~orchestratord.services.admission` — admission of new jobs;
* :mod:`~orchestratord.services.relay` — dispatch to a worker and relay of its events;
* :mod:`~orchestratord.services.fleet` — pools, heartbeats, worker starts and evictions;
* :mod:`~orchestratord.services.recovery` — restart recovery of unfinished jobs;
* :mod:`~orchestratord.services.views` — job status and listings for the API;
* :mod:`~orchestratord.services.scheduling` — the scheduling loop;
* :mod:`~orchestratord.services.policies` — the active policy and its hot swap.

They import each other only downwards in that list's dependency order (context, cluster
and jobs at the bottom; scheduling on top); the HTTP layer (:mod:`orchestratord.api`) sits
above them and the connectors (store, worker and pool clients, streams) below.
"""
