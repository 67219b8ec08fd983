"""Python client of the L² compression service (needs only httpx and pydantic; never torch).

from l2_client import Client
client = Client("http://127.0.0.1:8000", api_key="l2_...")      # or L2_URL / L2_API_KEY
job = client.submit(client.upload_checkpoint("model.pt"), client.upload_dataset("calib.pt"), 10.0)
job.wait().download("model.l2")
"""

from l2_client.aio import AsyncClient, AsyncJob
from l2_client.client import Client, Job
from l2_client.errors import (
    APIError,
    AuthenticationError,
    ChecksumMismatch,
    Conflict,
    ConnectionFailed,
    Gone,
    JobFailed,
    L2Error,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationError,
    WaitTimeout,
)
from l2_client.models import Checkpoint, Dataset, JobEvent, JobInfo, LayerResult
from l2_client.tus import ResumableUpload
from l2_client.webhooks import WebhookVerificationError, verify_webhook  # noqa: F401  (for receivers)

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "Checkpoint",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Dataset",
    "Gone",
    "Job",
    "JobEvent",
    "JobFailed",
    "JobInfo",
    "L2Error",
    "LayerResult",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "ResumableUpload",
    "ServerError",
    "ServiceUnavailable",
    "ValidationError",
    "WaitTimeout",
]
