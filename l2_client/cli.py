"""``l2 remote``: the service from a pipeline, on top of `l2_client`. Registered through the ``l2.commands``
entry point, so the library's command line never imports the client (nor the client torch).

Exit codes a pipeline can branch on: 0 done, 1 the job failed or was canceled, 2 bad usage or input, 3 the
service refused the request (4xx), 4 the service could not be reached or failed (5xx), 5 ``--wait`` timed out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
EPILOG = (
    "Exit codes: 0 done; 1 job failed or canceled; 2 bad usage or input; 3 refused by the service (4xx); "
    "4 service unreachable or failing (5xx); 5 --wait timed out. The URL and key come from --url/--api-key "
    "or L2_URL/L2_API_KEY."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="service URL (default L2_URL, else http://127.0.0.1:8000)")
    common.add_argument("--api-key", default=None, help="API key (default L2_API_KEY)")
    common.add_argument("--json", action="store_true", help="print JSON (one document) instead of text")
    common.add_argument(
        "--retries", type=int, default=5, help="retries of connection errors, 429 and 502-504 (default 5)"
    )

    remote = subparsers.add_parser(
        "remote",
        help="use a running L² service: submit jobs, follow, download (see 'l2 remote --help')",
        description="Drive a running L² service from a shell or pipeline. " + EPILOG,
    )
    sub = remote.add_subparsers(dest="remote_command", metavar="ACTION", required=True)

    s = sub.add_parser("submit", parents=[common], help="upload (if paths are given) and submit a job", epilog=EPILOG)
    s.add_argument("checkpoint", help="a checkpoint file to upload, or the id of an uploaded checkpoint")
    s.add_argument("--calibration", required=True, help="calibration data file to upload, or a dataset id")
    s.add_argument("--calibration-spec", default=None, help='calibration settings as JSON, e.g. {"kind":"tensors"}')
    s.add_argument("--eval", dest="eval_data", default=None, help="evaluation data file or dataset id (optional)")
    s.add_argument("--eval-spec", default=None, help="settings of the evaluation data as JSON")
    s.add_argument("--target-ratio", type=float, required=True, help="fp32 size / .l2 size, in (1, 100]")
    s.add_argument("--arch", default=None, help="registered architecture (needed for a plain state_dict)")
    s.add_argument("--arch-kwargs", default=None, help="architecture arguments as JSON")
    s.add_argument("--preset", default=None, choices=("fast", "balanced", "paper"), help="optimizer preset")
    s.add_argument("--options", default=None, help="optimizer options as JSON")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    s.add_argument("--idempotency-key", default=None, help="reuse to make a resubmission return the same job")
    s.add_argument("--wait", action="store_true", help="wait until the job has finished")
    s.add_argument("--timeout", type=float, default=None, help="seconds --wait waits at most")
    s.add_argument("--download", metavar="OUT", default=None, help="after --wait, download the .l2 file here")
    s.set_defaults(handler=run_submit)

    for name, helptext, handler in (
        ("status", "show one job", run_status),
        ("cancel", "cancel a queued or running job", run_cancel),
        ("layers", "per-layer results of a finished job (a table)", run_layers),
    ):
        p = sub.add_parser(name, parents=[common], help=helptext, epilog=EPILOG)
        p.add_argument("job_id")
        p.set_defaults(handler=handler)

    w = sub.add_parser("wait", parents=[common], help="wait until a job has finished", epilog=EPILOG)
    w.add_argument("job_id")
    w.add_argument("--timeout", type=float, default=None)
    w.set_defaults(handler=run_wait)

    ls = sub.add_parser("list", parents=[common], help="list your jobs (newest first)", epilog=EPILOG)
    ls.add_argument("--state", default=None, choices=("queued", "running", "succeeded", "failed", "canceled"))
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(handler=run_list)

    d = sub.add_parser("download", parents=[common], help="download a job's .l2 artifact", epilog=EPILOG)
    d.add_argument("job_id")
    d.add_argument("out", help="file to write")
    d.set_defaults(handler=run_download)


class _Usage(Exception):
    """Bad input on the command line (exit 2)."""


def _client(args):
    from l2_client import Client

    return Client(args.url, args.api_key, max_retries=max(0, args.retries))


def _json_arg(text: str | None, flag: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Usage(f"{flag} is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(value, dict):
        raise _Usage(f"{flag} must be a JSON object")
    return value


def _emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _job_line(info) -> str:
    ratio = f" ratio {info.true_ratio:.2f}x" if info.true_ratio else ""
    error = f" error: {info.error}" if info.error else ""
    return f"{info.id}  {info.state:<9} {info.phase or '':<14} {100 * info.progress:5.1f}%{ratio}{error}"


def _dump(info) -> dict:
    return info.model_dump(mode="json")


def _main(handler):
    """Map the client's errors to one readable line on stderr and the exit codes of the module docstring."""

    def run(args: argparse.Namespace) -> int:
        from l2_client.errors import APIError, ConnectionFailed, JobFailed, L2Error, ServerError, WaitTimeout

        try:
            return handler(args)
        except _Usage as exc:
            print(f"l2 remote: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except JobFailed as exc:
            print(f"l2 remote: {exc}", file=sys.stderr)
            return EXIT_JOB_FAILED
        except WaitTimeout as exc:
            print(f"l2 remote: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        except (ConnectionFailed, ServerError) as exc:
            print(f"l2 remote: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except APIError as exc:
            print(f"l2 remote: the service refused the request: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except (L2Error, OSError) as exc:
            print(f"l2 remote: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return run


def _input(client, value: str, kind: str, spec: dict | None = None):
    """A local file is uploaded; anything else is taken as the id of one already on the service."""
    path = Path(value)
    if path.is_file():
        return client.upload_checkpoint(path) if kind == "checkpoint" else client.upload_dataset(path, spec)
    if path.suffix or "/" in value:
        raise _Usage(f"{value!r} is not a file; give an existing file to upload or the id of a {kind}")
    return value


@_main
def run_submit(args) -> int:
    if args.download and not args.wait:
        raise _Usage("--download needs --wait")
    with _client(args) as client:
        checkpoint = _input(client, args.checkpoint, "checkpoint")
        calibration = _input(
            client, args.calibration, "dataset", _json_arg(args.calibration_spec, "--calibration-spec")
        )
        evaluation = None
        if args.eval_data:
            evaluation = _input(client, args.eval_data, "dataset", _json_arg(args.eval_spec, "--eval-spec"))
        job = client.submit(
            checkpoint,
            calibration,
            args.target_ratio,
            architecture=args.arch,
            arch_kwargs=_json_arg(args.arch_kwargs, "--arch-kwargs"),
            preset=args.preset,
            options=_json_arg(args.options, "--options"),
            eval_dataset=evaluation,
            device=args.device,
            idempotency_key=args.idempotency_key,
        )
        if not args.json:
            print(f"submitted job {job.id}", file=sys.stderr)
        if args.wait:
            job.wait(args.timeout, progress=not args.json, raise_on_failure=False)
        result = {"job": _dump(job.info)}
        if args.download and job.state == "succeeded":
            result["download"] = str(job.download(args.download))
        text = _job_line(job.info) + (f"\nwrote {result['download']}" if "download" in result else "")
        _emit(args, result if args.json else None, text)
        return EXIT_OK if job.state in ("succeeded", "queued", "running") else EXIT_JOB_FAILED


@_main
def run_status(args) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
    _emit(args, _dump(job.info), _job_line(job.info))
    return EXIT_OK


@_main
def run_wait(args) -> int:
    with _client(args) as client:
        job = client.job(args.job_id).wait(args.timeout, progress=not args.json, raise_on_failure=False)
    _emit(args, _dump(job.info), _job_line(job.info))
    return EXIT_OK if job.state == "succeeded" else EXIT_JOB_FAILED


@_main
def run_cancel(args) -> int:
    with _client(args) as client:
        job = client.job(args.job_id).cancel()
    _emit(args, _dump(job.info), _job_line(job.info))
    return EXIT_OK


@_main
def run_list(args) -> int:
    with _client(args) as client:
        jobs = client.jobs(state=args.state, limit=args.limit)
    _emit(args, [_dump(j.info) for j in jobs], "\n".join(_job_line(j.info) for j in jobs) or "no jobs")
    return EXIT_OK


@_main
def run_download(args) -> int:
    with _client(args) as client:
        job = client.job(args.job_id)
        path = job.download(args.out)
    _emit(args, {"job": job.id, "path": str(path), "sha256": job.info.artifact.sha256}, f"wrote {path}")
    return EXIT_OK


@_main
def run_layers(args) -> int:
    with _client(args) as client:
        layers = client.job(args.job_id).layers()
    if args.json:
        _emit(args, [layer.model_dump(mode="json") for layer in layers], "")
        return EXIT_OK
    rows = [("LAYER", "SHAPE", "MODE", "TRANSFORM", "BITS/W", "SPARSITY", "BYTES", "FP32 BYTES")]
    for r in layers:
        rows.append(
            (
                r.name,
                "x".join(map(str, r.shape)),
                r.mode,
                r.transform or "-",
                f"{r.bit_width:.2f}" if r.bit_width is not None else "-",
                f"{r.sparsity:.1%}" if r.sparsity is not None else "-",
                str(r.bytes) if r.bytes is not None else "-",
                str(r.original_bytes) if r.original_bytes is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        print("  ".join(cells))
    return EXIT_OK
