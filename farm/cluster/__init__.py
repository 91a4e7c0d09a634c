"""The farm across machines: the Celery app, workers, the controller (submit, wait, cancel) and
the embedded default (a private redis-server and local workers)."""
