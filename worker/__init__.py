"""The L² worker: a Celery app with explicit ``cpu``/``gpu`` queues, a thin task, and the pipeline that
turns a job row into a finished ``.l2`` artifact. Importing this package (or `worker.celery_app`)
never imports torch: torch, and CUDA with it, are touched only inside the worker child that runs a job."""
