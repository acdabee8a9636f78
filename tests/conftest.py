from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # the real chest X-rays: ../shared/data from the repository root

# ------------------------------------------------------------------------ the real X-rays: one way to skip without them


needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"needs the real chest X-rays: looked for ../shared/data at {SHARED_DATA} and found no folder there")


def pytest_collection_modifyitems(items):
    """Every test marked ``@pytest.mark.shared`` (the test, its class or its module) is skipped, before its
    fixtures are built, when ../shared/data is absent: mark a test that reads the real X-rays, and that is all."""
    for item in items:
        if item.get_closest_marker("shared"):
            item.add_marker(needs_shared_data)


@pytest.fixture
def shared_data(request) -> Path:
    """../shared/data, for a test marked ``@pytest.mark.shared``."""
    assert request.node.get_closest_marker("shared"), f"mark {request.node.name} @pytest.mark.shared: it reads " \
                                                      f"../shared/data (and is skipped without it)"
    return SHARED_DATA


# ------------------------------------------------------------------------------------- scratch folders and environments


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A scratch working directory laid out like the repository root (stages write data/, reports/ there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def mlflow_env(monkeypatch):
    """No ``MLFLOW_TRACKING_URI`` from the environment: the store the test's params name is the one used."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def copy_repo_tree(dest: Path) -> None:
    """Copy the tracked parts of the repository a stage needs (for end-to-end runs in a scratch dir)."""
    for name in ("dvc.yaml", "params.yaml", "configs", "stages", "src"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def write_bomb_png(path: Path, side: int = 13000) -> Path:
    """A decompression bomb: a ~165 kB greyscale PNG of ``side`` x ``side`` pixels (all black), written row by row
    without ever holding the picture in memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = (b"\x00" * (side + 1)) * 64  # filter byte + one row of black pixels, 64 rows at a time
    idat = b"".join(z.compress(rows) for _ in range(side // 64)) + z.compress(b"\x00" * (side + 1) * (side % 64))
    idat += z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory) -> Path:
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


# --------------------------------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="session")
def trained_cnn5(tmp_path_factory):
    """A small cnn5 trained once per session (helpers.trained.train_cnn5: processed data, model.pt, metrics, its
    MLflow run and logged model in a store of its own). Read it; a test that writes into it (reruns the training,
    evaluates into its metrics, registers it) takes ``trained_cnn5.copy(tmp_path)`` first."""
    from helpers.trained import train_cnn5

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store its params name
        return train_cnn5(tmp_path_factory.mktemp("trained_cnn5"))
