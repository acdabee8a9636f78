"""A team MLflow tracking server (``lungxray mlflow-server``): PostgreSQL as the store, artifacts served by MLflow.

* Backend store (runs and the model registry): an existing PostgreSQL given by ``backend_store_uri``, or a local one
  that this module creates with ``initdb`` in ``pg_data`` and runs as a child process. The local one listens on
  127.0.0.1:``pg_port`` and on a Unix socket in its data directory; the socket trusts the local user (MLflow connects
  through it), TCP logins need a password (none is set, so nobody else gets in by TCP).
* Artifacts: uploaded to and downloaded from the MLflow server itself (``--serve-artifacts``), which stores them under
  ``artifacts_destination`` (a folder, or ``s3://bucket/path`` with the usual AWS variables): clients need no access
  to the storage, only to the server, and new experiments get ``mlflow-artifacts:/`` locations.
* The store's password never appears on a command line (``ps`` shows every argument to every local user): the URI is
  taken from ``$MLFLOW_BACKEND_STORE_URI`` or a file (:func:`backend_store_uri`), or libpq's ``~/.pgpass`` /
  ``$PGPASSFILE`` holds the password, and the ``mlflow server`` child gets it in its environment
  (:func:`server_environment`), never as an argument. A password given with ``--backend-store-uri`` still works, with
  a warning. Messages and logs show the URI with ``***`` for the password (:func:`redact`).
* Bound to ``127.0.0.1`` unless ``host`` says otherwise.
* ``auth``: MLflow's basic-auth app (``--app-name basic-auth``). Its users live in the database ``<name>_auth`` of the
  local PostgreSQL (or ``auth_database_uri``). The first start creates the admin from ``MLFLOW_AUTH_ADMIN_USERNAME``
  (default ``admin``) and ``MLFLOW_AUTH_ADMIN_PASSWORD``; ``MLFLOW_FLASK_SERVER_SECRET_KEY`` must be set. Clients send
  ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``.

The pipeline logs there when ``MLFLOW_TRACKING_URI`` points at the server (see
:func:`lungxray.core.tracking.mlflow_setup`). """

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import Field

from lungxray.core.config import Strict
from lungxray.core.errors import LungxrayError

log = logging.getLogger(__name__)

PG_USER = "mlflow"  # the database role the local PostgreSQL is created with (initdb -U)
DEBIAN_PG_BIN = Path("/usr/lib/postgresql")  # Debian's postgresql package: /usr/lib/postgresql/<version>/bin
INSTALL_HINT = ("install PostgreSQL (Debian/Ubuntu: sudo apt-get install -y postgresql; macOS: brew install "
                "postgresql) or give an existing server with --backend-store-uri postgresql://user:pass@host:5432/db")


class ServerSettings(Strict):
    host: str = Field("127.0.0.1", description="interface the MLflow server binds to (0.0.0.0: every interface)")
    port: int = Field(5000, description="port of the MLflow server")
    workers: int = Field(2, ge=1, description="MLflow server worker processes")
    backend_store_uri: str | None = Field(None, description="an existing PostgreSQL (postgresql://user:pass@host/db); "
                                                            "unset: a local one in pg_data")
    pg_data: Path = Field(Path("mlflow-server/postgres"), description="data directory of the local PostgreSQL")
    pg_port: int = Field(5433, description="port of the local PostgreSQL (127.0.0.1)")
    database: str = Field("mlflow", description="database of the local PostgreSQL for runs and the registry")
    artifacts_destination: str = Field("mlflow-server/artifacts", description="where the server stores artifacts: "
                                                                              "a folder or s3://bucket/path")
    auth: bool = Field(False, description="MLflow's basic-auth app: every request needs a user and password")
    auth_database_uri: str | None = Field(None, description="users of the auth app; unset: <database>_auth of the "
                                                            "local PostgreSQL, or the backend store")


# ---------------------------------------------------------------------------------------------------------------------
# checks that fail early with what to do


def ensure_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise LungxrayError(f"port {port} on {host} is taken ({e.strerror}): another {what} or program listens "
                                f"there; stop it or choose another port") from None


def redact(uri: str) -> str:
    """The URI without its password."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", uri)


BACKEND_STORE_ENV = "MLFLOW_BACKEND_STORE_URI"  # read by `mlflow server` itself, too


def has_password(uri: str) -> bool:
    return redact(uri) != uri


def backend_store_uri(given: str | None, file: str | None,
                      environ: dict | None = None) -> tuple[str | None, str | None]:
    """The URI of an existing store and a warning (or ``None``): from ``--backend-store-uri`` (``given``), else from
    ``--backend-store-uri-file`` (``file``: its first line), else ``$MLFLOW_BACKEND_STORE_URI``; ``None``: a local
    PostgreSQL. A password in ``given`` is visible in ``ps`` while the command runs: it still works, with a warning
    that names the safe ways. Both options at once, or a file that cannot be read or is empty, is an error."""
    environ = os.environ if environ is None else environ
    if given and file:
        raise LungxrayError("give only one of --backend-store-uri and --backend-store-uri-file")
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as e:
            raise LungxrayError(f"cannot read --backend-store-uri-file {file} ({e.strerror}): write the URI "
                                f"(postgresql://user:password@host:5432/db) into it, readable by you alone "
                                f"(chmod 600)") from None
        if not lines or not lines[0].strip():
            raise LungxrayError(f"--backend-store-uri-file {file} is empty: write the URI "
                                f"(postgresql://user:password@host:5432/db) on its first line")
        return lines[0].strip(), None
    if given:
        warning = None if not has_password(given) else (
            f"the database password of --backend-store-uri {redact(given)} is visible to every local user (ps) "
            f"while this command runs: pass the URI in the environment ({BACKEND_STORE_ENV}=...), in a file "
            f"(--backend-store-uri-file FILE, chmod 600), or keep the password in ~/.pgpass (or $PGPASSFILE) and "
            f"leave it out of the URI")
        return given, warning
    return environ.get(BACKEND_STORE_ENV) or None, None


def sqlalchemy_uri(uri: str) -> str:
    """The URI with the psycopg2 driver named (SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3, not
    installed); a URI that names its driver is kept."""
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", uri)


def check_database(uri: str) -> None:
    """Connect once to a PostgreSQL URI (``postgresql[+driver]://...``); a clear error when it cannot be reached."""
    import psycopg2

    if not uri.startswith(("postgresql://", "postgresql+", "postgres://")):
        raise LungxrayError(f"{redact(uri)} is not a PostgreSQL URI: use postgresql://user:password@host:5432/db")
    try:
        psycopg2.connect(re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", uri), connect_timeout=10).close()
    except psycopg2.Error as e:
        raise LungxrayError(f"cannot reach the PostgreSQL database {redact(uri)} ({str(e).strip()}): check host, "
                            f"port, user, password and that the database exists, or leave out --backend-store-uri to "
                            f"run a local PostgreSQL") from None


def find_pg_bin(name: str) -> Path:
    """A PostgreSQL program: on PATH, else in Debian's versioned folder (the newest version)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(DEBIAN_PG_BIN.glob(f"*/bin/{name}"), key=lambda p: int(re.sub(r"\D", "", p.parts[-3]) or 0))
    if versions:
        return versions[-1]
    raise LungxrayError(f"PostgreSQL's {name} is not installed (not on PATH nor under {DEBIAN_PG_BIN}/<version>/bin): "
                        f"{INSTALL_HINT}")


# ---------------------------------------------------------------------------------------------------------------------
# a local PostgreSQL


def pg_account() -> str | None:
    """PostgreSQL refuses to run as root: as root, the ``postgres`` account (made by Debian's package) runs it."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise LungxrayError("PostgreSQL cannot run as root and there is no 'postgres' account: run as an ordinary "
                            f"user, or {INSTALL_HINT}") from None
    return "postgres"


def _run_as(account: str | None) -> dict:
    return {"user": account, "group": account, "extra_groups": []} if account else {}


def init_cluster(data: Path, account: str | None) -> None:
    """``initdb`` a new cluster in ``data`` (a cluster already there is kept)."""
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if account:
        shutil.chown(data, account, account)
    log.info("creating a PostgreSQL cluster in %s", data)
    r = subprocess.run([str(find_pg_bin("initdb")), "-D", str(data), "-U", PG_USER, "-E", "UTF8", "--no-instructions",
                        "--auth-local=trust", "--auth-host=scram-sha-256"],
                       capture_output=True, text=True, **_run_as(account))
    if r.returncode != 0:
        raise LungxrayError(f"initdb {data} failed: {r.stderr.strip()[-800:]}")


def socket_uri(data: Path, port: int, database: str) -> str:
    return f"postgresql://{PG_USER}@/{database}?host={data.resolve()}&port={port}"


def start_postgres(data: Path, port: int, account: str | None) -> subprocess.Popen:
    """Run ``postgres`` on 127.0.0.1:``port`` and a socket in ``data`` as a child; return once it accepts logins."""
    import psycopg2

    if len(str(data.resolve())) > 90:
        raise LungxrayError(f"{data.resolve()} is too long a path for PostgreSQL's socket: choose a shorter --pg-data")
    ensure_port_free("127.0.0.1", port, "PostgreSQL")
    logfile = open(data.resolve().parent / "postgres.log", "ab")
    proc = subprocess.Popen([str(find_pg_bin("postgres")), "-D", str(data.resolve()), "-p", str(port),
                             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data.resolve()}"],
                            stdout=logfile, stderr=subprocess.STDOUT, **_run_as(account))
    logfile.close()
    while True:
        try:
            psycopg2.connect(socket_uri(data, port, "postgres"), connect_timeout=5).close()
            return proc
        except psycopg2.OperationalError:
            if proc.poll() is not None:
                tail = (data.resolve().parent / "postgres.log").read_text(errors="replace")[-800:]
                raise LungxrayError(f"PostgreSQL in {data} stopped while starting:\n{tail}") from None
            time.sleep(0.3)


def ensure_database(admin_uri: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a child (``SIGINT`` is PostgreSQL's fast shutdown), killing it when it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------------------------
# the MLflow server


def server_command(s: ServerSettings) -> list[str]:
    """The ``mlflow server`` command line: no store URI on it (see :func:`server_environment`)."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--serve-artifacts",
           "--artifacts-destination", s.artifacts_destination, "--host", s.host, "--port", str(s.port),
           "--workers", str(s.workers)]
    return cmd + (["--app-name", "basic-auth"] if s.auth else [])


def server_environment(backend_uri: str) -> dict[str, str]:
    """The store URI for ``mlflow server``, which reads ``$MLFLOW_BACKEND_STORE_URI`` when ``--backend-store-uri`` is
    not given: a child's environment is readable by its user and root only, its arguments by everyone (``ps``)."""
    return {BACKEND_STORE_ENV: backend_uri}


def auth_environment(s: ServerSettings, auth_uri: str, state: Path) -> dict[str, str]:
    """The environment the basic-auth app reads: its config file (users in ``auth_uri``) and the secret key."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:
        raise LungxrayError("--auth needs MLflow's auth extra (Flask-WTF), which `make setup` installs: "
                            "pip install 'mlflow[auth]==3.17.2'")
    if not os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        raise LungxrayError("--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (any long random string, the same for every "
                            "server of the team) and, the first time, MLFLOW_AUTH_ADMIN_PASSWORD (the admin's "
                            "password; MLFLOW_AUTH_ADMIN_USERNAME, default admin): export them and start again")
    state.mkdir(parents=True, exist_ok=True)
    ini = state / "basic_auth.ini"
    fd = os.open(ini, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the store's password: never
    os.fchmod(fd, 0o600)  # readable by others, not even between its creation and a chmod
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {auth_uri}\nadmin_username = admin\n"
                 f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini.resolve())}


def wait_until_serving(proc: subprocess.Popen, url: str) -> None:
    import urllib.error
    import urllib.request

    while True:
        if proc.poll() is not None:
            raise LungxrayError(f"the MLflow server stopped while starting (exit {proc.returncode}); its messages "
                                f"are above")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)


@contextmanager
def team_server(s: ServerSettings) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start PostgreSQL (when local) and the MLflow server; yield its URL and process; stop both on exit."""
    ensure_port_free(s.host, s.port, "MLflow server")
    postgres = None
    try:
        if s.backend_store_uri:
            check_database(s.backend_store_uri)
            backend = sqlalchemy_uri(s.backend_store_uri)
            auth_uri = sqlalchemy_uri(s.auth_database_uri or backend)
        else:
            account = pg_account()
            init_cluster(s.pg_data, account)
            postgres = start_postgres(s.pg_data, s.pg_port, account)
            for db in (s.database, f"{s.database}_auth"):
                ensure_database(socket_uri(s.pg_data, s.pg_port, "postgres"), db)
            backend = sqlalchemy_uri(socket_uri(s.pg_data, s.pg_port, s.database))
            auth_uri = sqlalchemy_uri(s.auth_database_uri or socket_uri(s.pg_data, s.pg_port, f"{s.database}_auth"))
        env = {**os.environ, **server_environment(backend),
               **(auth_environment(s, auth_uri, Path(s.pg_data).parent) if s.auth else {})}
        if "://" not in s.artifacts_destination:
            Path(s.artifacts_destination).mkdir(parents=True, exist_ok=True)
        server = subprocess.Popen(server_command(s), env=env)
        try:
            url = f"http://{'127.0.0.1' if s.host in ('0.0.0.0', '::') else s.host}:{s.port}"
            wait_until_serving(server, url)
            log.info("MLflow server at %s (store %s, artifacts %s)", url, redact(backend), s.artifacts_destination)
            yield url, server
        finally:
            stop(server)
    finally:
        stop(postgres, signal.SIGINT)
