"""The deployment files describe a runnable service: docker-compose.yml parses, every command it runs exists
in this package, and the GPU image is built the way the worker expects."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile.gpu"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_declares_the_service_topology(compose):
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "gpu-worker", "cpu-worker"} <= set(services)
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "gpu-worker", "cpu-worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_gpu_worker_reserves_an_nvidia_device_and_consumes_only_the_gpu_queue(compose):
    gpu = compose["services"]["gpu-worker"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    argv = _argv(gpu["command"])
    assert argv[argv.index("--queues") + 1] == "gpu"
    cpu = _argv(compose["services"]["cpu-worker"]["command"])
    assert cpu[cpu.index("--queues") + 1] == "cpu"


def test_services_share_the_data_volume_and_configure_every_server(compose):
    services = compose["services"]
    for name in ("migrate", "api", "gpu-worker", "cpu-worker"):
        assert any(str(v).startswith("l2-data:") for v in services[name]["volumes"]), name
        env = services[name]["environment"]
        assert env["L2_DATABASE_URL"].startswith("postgresql")
        assert env["L2_BROKER_URL"].startswith("redis://")
        assert env["L2_DATA_DIR"] == "/data"


def test_every_l2_env_var_is_a_settings_field(compose):
    settings_module = importlib.import_module("store.settings")
    fields = {name.lower() for name in settings_module.Settings.model_fields}
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("L2_"):
                assert key[3:].lower() in fields, f"{name}: {key} is not a Settings field"


def test_every_command_in_compose_exists_in_the_package(compose):
    from compression_core.cli import build_parser

    parser = build_parser()
    seen = 0
    for name, service in compose["services"].items():
        if "command" not in service or name in ("postgres", "redis"):
            continue
        argv = _argv(service["command"])
        if argv[0] == "l2":
            args = parser.parse_args(argv[1:])
            assert callable(args.handler), name
        elif argv[0] == "uvicorn":
            module, _, attr = argv[1].partition(":")
            assert hasattr(importlib.import_module(module), attr), name
        else:
            pytest.fail(f"{name}: unexpected program {argv[0]!r}")
        seen += 1
    assert seen >= 4


def test_worker_and_serve_commands_are_registered():
    from compression_core.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["worker", "--queues", "gpu"])
    assert args.queues == "gpu" and args.concurrency == 1
    args = parser.parse_args(["serve", "--demo"])
    assert args.demo and not args.no_worker


def test_celery_app_uses_late_ack_prefetch_one_and_explicit_queues():
    from worker.celery_app import celery_app

    conf = celery_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert not conf.task_create_missing_queues
    assert {q.name for q in conf.task_queues} == {"cpu", "gpu"}
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    import worker.tasks  # noqa: F401  (what the worker imports through ``include``)

    assert "l2.run_job" in celery_app.tasks


def test_importing_the_celery_app_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, worker.celery_app, worker.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_gpu_image_uses_a_cuda_runtime_base_python_3_11_and_a_non_root_user():
    text = DOCKERFILE.read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert "nvidia/cuda" in base and "runtime" in base
    assert "python3.11" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "pip install" in text and "." in text
