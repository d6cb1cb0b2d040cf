"""The server stack as production runs it: gunicorn's UvicornWorker on uvloop with the httptools parser.

`make run` (deploy/run-local.sh), the images (deploy/Dockerfile), the suites and the bench, with its reference app,
all start gunicorn with deploy/gunicorn.conf.py, so they all get what that file's worker class asks uvicorn for.
"""

import json
import re
import time
from pathlib import Path

import uvicorn
import uvloop
from uvicorn.importer import import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tests.conftest import service_env
from tests.perf.bench import REFERENCE_APP
from tests.processes import GUNICORN_CONFIG, REPO, ServiceProcess, free_port

WORKERS = 2


def configured_worker_class() -> str:
    # Read, not run: running the config makes a metrics folder and sets PROMETHEUS_MULTIPROC_DIR in this process.
    match = re.search(r'^worker_class = "([\w.]+)"$', GUNICORN_CONFIG.read_text(), re.MULTILINE)
    assert match, "deploy/gunicorn.conf.py names no worker_class"
    return match.group(1)


async def no_app(scope, receive, send) -> None:  # noqa: ANN001
    raise AssertionError("never called")


def test_the_worker_class_gets_uvloop_and_httptools_from_uvicorn() -> None:
    module, _, name = configured_worker_class().rpartition(".")
    worker_class = import_from_string(f"{module}:{name}")
    config = uvicorn.Config(no_app, log_config=None, **worker_class.CONFIG_KWARGS)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_make_run_and_the_images_start_gunicorn_with_that_config_and_the_pinned_lock() -> None:
    run_local = (REPO / "deploy" / "run-local.sh").read_text()
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    lock = (REPO / "requirements.lock").read_text()
    assert run_local.count('gunicorn" -c deploy/gunicorn.conf.py') == 2
    assert "COPY deploy/gunicorn.conf.py /app/gunicorn.conf.py" in dockerfile
    assert "exec gunicorn -c /app/gunicorn.conf.py" in dockerfile
    assert "pip install --only-binary=:all: -r requirements.lock" in dockerfile
    assert re.search(r"^uvloop==", lock, re.MULTILINE) and re.search(r"^httptools==", lock, re.MULTILINE)


def event_loops_logged(process: ServiceProcess, *, timeout: float = 10.0) -> list[str]:
    """The `event_loop` of each "worker started" line, once every worker has written one."""
    deadline = time.monotonic() + timeout
    while True:
        loops = []
        for line in process.log_text().splitlines():
            if line.startswith("{") and '"worker started"' in line:
                loops.append(json.loads(line)["event_loop"])
        if len(loops) >= WORKERS or time.monotonic() > deadline:
            return loops
        time.sleep(0.1)


def test_every_worker_of_a_service_and_of_the_bench_reference_runs_on_uvloop(database_url: str, tmp_path: Path) -> None:
    env = service_env(database_url)
    for name, app in (("users", None), ("reference", REFERENCE_APP)):
        process = ServiceProcess(name, free_port(), env, tmp_path / f"{name}.log", workers=WORKERS, app=app).start()
        try:
            assert event_loops_logged(process) == ["uvloop.Loop"] * WORKERS, name
        finally:
            process.stop()
