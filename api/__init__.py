"""The HTTP API and persistence of the L² service: settings, database, ORM models, storage, routes.

This package never imports torch: it stores files, writes rows and enqueues work for `worker`."""
