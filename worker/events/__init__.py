"""Events out of the service, delivered by the workers: signed webhooks from the outbox (`dispatcher`), and
MLflow exports of succeeded jobs (`mlflow_export`)."""
