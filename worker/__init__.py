"""Celery workers of the lab: thin tasks that claim a run, call the library and record what it does."""
