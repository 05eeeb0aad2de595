"""OBoW Lab server: REST API, dashboard and database for runs, metrics and artifacts.

Nothing here imports torch: specs come from `obow.runs` (pydantic only) and work goes to the Celery
workers by task name.
"""
