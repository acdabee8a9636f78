"""The team MLflow server: PostgreSQL store, served artifacts, basic auth, and the pipeline logging there."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from lungxray.core.errors import LungxrayError
from lungxray.core.tracking import MlflowParams, mlflow_setup
from lungxray.registry import server
from lungxray.registry.server import ServerSettings, team_server

from conftest import REPO
from helpers.httpserver import free_port
from helpers.processed import make_processed, train_params


def test_the_tracking_uri_from_the_environment_wins_over_params(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/team.db")
    mlflow_setup(MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/params.db", artifact_dir=str(tmp_path / "a")))
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/team.db"
    assert (tmp_path / "team.db").exists() and not (tmp_path / "params.db").exists()


def test_one_stores_uri_does_not_leak_into_the_environment_and_win_over_the_next_params(tmp_path, monkeypatch):
    import os

    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("first", "second"):
        mlflow_setup(MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/{name}.db", artifact_dir=str(tmp_path / name)))
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/{name}.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_the_runs_page_url_asks_the_mlflow_ui_for_the_training_runs_on_ui_or_on_the_server(tmp_path, monkeypatch):
    """MLflow 3.17's UI opens an experiment on its GenAI Overview unless the address asks for the training runs
    (``workflowType=machine_learning``): a local store's are on `mlflow ui`'s default address, a server's on it."""
    import mlflow

    from lungxray.registry import register

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp = MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/ui.db", experiment="xr", artifact_dir=str(tmp_path / "a"))
    url = register.runs_page_url(mp)
    page = f"#/experiments/{mlflow.get_experiment_by_name('xr').experiment_id}/runs?workflowType=machine_learning"
    assert url == f"http://127.0.0.1:5000/{page}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org/")
    monkeypatch.setattr(register, "mlflow_setup", lambda mp: mlflow)  # no server here: the store above answers
    assert register.runs_page_url(mp) == f"https://mlflow.example.org/{page}"


def test_a_missing_postgresql_is_a_clear_error_that_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    monkeypatch.setattr(server, "DEBIAN_PG_BIN", tmp_path)
    with pytest.raises(LungxrayError, match="initdb is not installed.*apt-get install -y postgresql"):
        server.find_pg_bin("initdb")


def test_postgresql_is_found_in_debians_versioned_folder_when_not_on_path(tmp_path, monkeypatch):
    for version in ("9", "15", "13"):
        (tmp_path / version / "bin").mkdir(parents=True)
        (tmp_path / version / "bin" / "pg_ctl").touch()
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    monkeypatch.setattr(server, "DEBIAN_PG_BIN", tmp_path)
    assert server.find_pg_bin("pg_ctl") == tmp_path / "15" / "bin" / "pg_ctl"


def test_a_taken_port_is_a_clear_error_before_anything_starts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LungxrayError, match=f"port {port} on 127.0.0.1 is taken"):
            with team_server(ServerSettings(port=port, pg_data=tmp_path / "pg")):
                pass
    assert not (tmp_path / "pg").exists()


def test_an_unreachable_database_is_a_clear_error_that_hides_the_password():
    uri = f"postgresql://team:s3cret@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(LungxrayError, match="cannot reach the PostgreSQL database") as e:
        server.check_database(uri)
    assert "s3cret" not in str(e.value) and "team:***@" in str(e.value)


def test_a_bare_postgresql_uri_is_given_to_mlflow_with_the_installed_driver():
    assert server.sqlalchemy_uri("postgresql://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert server.sqlalchemy_uri("postgresql+pg8000://u@h/db") == "postgresql+pg8000://u@h/db"


def test_the_server_binds_to_loopback_serves_artifacts_and_uses_basic_auth_when_asked():
    cmd = server.server_command(ServerSettings(auth=True))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert "--app-name" not in server.server_command(ServerSettings())


# ---------------------------------------------------------------------------------------------------------------------
# the database password stays out of `ps`

SECRET_URI = "postgresql://team:S3CRET-pw@db.example.org:5432/mlflow"


def test_the_database_password_reaches_the_mlflow_server_in_its_environment_never_its_command_line(tmp_path,
                                                                                                    monkeypatch):
    started = []

    class Child:
        def __init__(self, cmd, env=None, **_):
            started.append((cmd, env))

    monkeypatch.setattr(server.subprocess, "Popen", Child)
    for name in ("ensure_port_free", "check_database", "wait_until_serving", "stop"):
        monkeypatch.setattr(server, name, lambda *a, **k: None)
    with team_server(ServerSettings(backend_store_uri=SECRET_URI, artifacts_destination=str(tmp_path / "a"))):
        pass
    [(cmd, env)] = started
    assert not any("S3CRET" in arg for arg in cmd), cmd  # `ps` shows every argument to every local user
    assert "--backend-store-uri" not in cmd
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://team:S3CRET-pw@db.example.org:5432/mlflow"


@pytest.fixture
def fake_team_server(monkeypatch):
    """`lungxray mlflow-server` without a server: the settings it would start one with."""
    from contextlib import contextmanager

    seen = []

    class Running:
        def wait(self) -> int:
            return 0

    @contextmanager
    def fake(settings):
        seen.append(settings)
        yield "http://127.0.0.1:5000", Running()

    monkeypatch.setattr(server, "team_server", fake)
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    on_sigterm = signal.getsignal(signal.SIGTERM)  # the command sets its own
    yield seen
    signal.signal(signal.SIGTERM, on_sigterm)


def test_the_backend_store_uri_is_taken_from_the_environment_without_a_warning(fake_team_server, monkeypatch,
                                                                                capsys):
    from lungxray.cli.commands import main

    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", SECRET_URI)
    assert main(["mlflow-server"]) == 0
    assert fake_team_server[-1].backend_store_uri == SECRET_URI
    out, err = capsys.readouterr()
    assert "warning" not in err and "S3CRET" not in out + err


def test_the_backend_store_uri_is_read_from_a_file(fake_team_server, tmp_path, capsys):
    from lungxray.cli.commands import main

    secret = tmp_path / "store-uri"
    secret.write_text(SECRET_URI + "\n")
    secret.chmod(0o600)
    assert main(["mlflow-server", "--backend-store-uri-file", str(secret)]) == 0
    assert fake_team_server[-1].backend_store_uri == SECRET_URI
    out, err = capsys.readouterr()
    assert "warning" not in err and "S3CRET" not in out + err
    assert main(["mlflow-server", "--backend-store-uri-file", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["mlflow-server", "--backend-store-uri-file", str(secret), "--backend-store-uri", SECRET_URI]) == 2
    assert "only one" in capsys.readouterr().err


def test_a_password_on_the_command_line_draws_a_warning_that_names_the_safe_ways(fake_team_server, capsys):
    from lungxray.cli.commands import main

    assert main(["mlflow-server", "--backend-store-uri", SECRET_URI]) == 0
    assert fake_team_server[-1].backend_store_uri == SECRET_URI  # still works
    out, err = capsys.readouterr()
    assert "warning" in err and "ps" in err and "MLFLOW_BACKEND_STORE_URI" in err and "--backend-store-uri-file" in err
    assert "S3CRET" not in out + err
    assert main(["mlflow-server", "--backend-store-uri", "postgresql://team@db.example.org/mlflow"]) == 0
    assert "warning" not in capsys.readouterr().err  # no password (~/.pgpass or PGPASSFILE holds it): nothing to hide


# ---------------------------------------------------------------------------------------------------------------------
# a real PostgreSQL and MLflow server


def postgres_or_skip() -> None:
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("needs MLflow's auth extra (Flask-WTF): make setup installs mlflow[auth]")
    try:
        server.find_pg_bin("initdb"), server.find_pg_bin("postgres")
        server.pg_account()
    except LungxrayError as e:
        pytest.skip(f"needs PostgreSQL's initdb and postgres (apt-get install -y postgresql): {e}")


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    while http_status_or_none(f"{url}/health") != 200:
        assert proc.poll() is None, f"the server stopped:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def http_status_or_none(url: str) -> int | None:
    try:
        return http_status(url)
    except (urllib.error.URLError, OSError):
        return None


def kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the whole group is gone
        pass


@pytest.fixture
def team(monkeypatch):
    """`lungxray mlflow-server --auth` on free loopback ports, PostgreSQL in a temporary folder (that the postgres
    account can enter when the tests run as root); both stopped (their process group) whatever the test does."""
    postgres_or_skip()
    root = Path(tempfile.mkdtemp(prefix="lx-team-", dir="/tmp"))
    root.chmod(0o755)
    port, password = free_port(), "team-admin-password-42"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lungxray.cli", "mlflow-server", "--auth", "--port", str(port),
                                 "--pg-port", str(free_port()), "--pg-data", str(root / "pg"), "--workers", "1",
                                 "--artifacts-destination", str(root / "artifacts")],
                                cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, log)
        yield url, ("admin", password), root
    finally:
        kill_group(proc, signal.SIGTERM)  # the command stops the MLflow server, then PostgreSQL
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            pass
        kill_group(proc, signal.SIGKILL)  # whatever is left of the group
        proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_train_evaluate_register_log_to_the_team_server_whose_auth_refuses_strangers(team, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from lungxray.compare.leaderboard import leaderboard_rows
    from lungxray.compare.promote import PromotionParams
    from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
    from lungxray.registry.register import load_predictions, register_and_promote
    from lungxray.train.fit import train_model

    url, (user, password), root = team
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(search) == 401
    assert http_status(search, (user, password)) == 200

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # wins over the local store train_params names
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    processed = make_processed(tmp_path, n_train=24, n_val=12, size=32)
    index = pd.read_csv(processed / "index.csv")
    index["unit"] = index.id
    index.to_csv(processed / "index.csv", index=False)
    tp = train_params(tmp_path, epochs=1)
    trained = train_model("cnn5", tp, processed, tmp_path / "models/cnn5", tmp_path / "metrics/cnn5", progress=False)
    evaluate_model("cnn5", processed, tmp_path / "models/cnn5/model.pt", tmp_path / "metrics/cnn5",
                   tmp_path / "reports/cnn5", EvaluateParams(bootstrap=50, latency_batches=1, batch_size=16), trained,
                   tp.mlflow)
    decision = register_and_promote(leaderboard_rows(["cnn5"], tmp_path / "metrics"),
                                    PromotionParams(registered_model="team-cxr", bootstrap=50), tp.mlflow,
                                    load_predictions(["cnn5"], tmp_path / "metrics", "val"), tmp_path / "models")

    client = MlflowClient(url)
    champion = client.get_model_version_by_alias("team-cxr", "champion")
    assert decision["promote"] and champion.tags["model"] == "cnn5"
    run = client.get_run(trained["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    assert "val/macro_recall" in run.data.metrics
    uploaded = {p.name for p in (root / "artifacts").rglob("*")}
    assert {"MLmodel", "predictions_val.csv"} <= uploaded
    assert not (tmp_path / "mlruns").exists()  # nothing went to the local store
