"""A lab worker for the integration tests: the production worker command (`python -m worker`), plus
the test-only kinds (registered before Celery starts, so the task finds them)."""

from tests.lab import fake_kinds

if __name__ == "__main__":
    fake_kinds.register(keep_real=True)
    from worker.__main__ import main

    main(["--pool", "solo", "--queues", "gpu,cpu", "--loglevel", "WARNING"], prog_name="python -m worker")
