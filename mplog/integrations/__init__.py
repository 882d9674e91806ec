"""Integrations with frameworks that start worker processes of their own (e.g. :mod:`mplog.integrations.celery`)."""
