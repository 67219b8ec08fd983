"""What the API process and the worker processes share: the service's settings, the database (engine,
sessions, migrations), the ORM models, every change of a job's state (`store.job_states`) and the broker
message that points a worker at a job (`store.queues`).

Both `api` and `worker` import this package at the top of their modules; it imports neither of them, nor torch
nor FastAPI, so it is cheap in every process.
"""
