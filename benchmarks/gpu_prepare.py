"""Prepare ``.gpu/`` (git-ignored) for benchmarks/gpu_check.sh on a GPU machine that reaches no package registry.

    python benchmarks/gpu_prepare.py [--data ../shared/data] [--python-version 3.12]

* ``.gpu/wheels``: the wheels of what the GPU machine's image lacks (pydantic, mlflow-skinny and what the train,
  evaluate and predict code paths import of its requirements, grad-cam, pydicom, pandas 3), for its Python,
  downloaded from the package index (``pip download``; grad-cam is built from its sdist).
* ``.gpu/processed``: the real pipeline's fetch -> dedupe -> validate -> split -> preprocess stages run on the
  rehearsal profile's subset of ``--data`` (configs/rehearsal.yaml: about 240 kept X-rays at 224 px, 12 MB).
* ``.gpu/files``: one PNG, one JPEG and one DICOM X-ray of ``--data`` for ``lungxray predict``.

Everything together stays under the device tool's 64 MiB (checked at the end).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / ".gpu"
WHEELS = ["mlflow-skinny==3.17.2", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
          "typing-inspection==0.4.5", "sqlalchemy==2.1.9", "alembic==1.20.1", "mako==1.4.3", "sqlparse==0.6.1",
          "cachetools==7.3.3", "databricks-sdk==0.167.0", "opentelemetry-api==1.45.2", "opentelemetry-proto==1.45.2",
          "opentelemetry-sdk==1.45.2", "opentelemetry-semantic-conventions==0.66b2", "gitpython==3.2.1",
          "gitdb==4.0.12", "smmap==5.0.3", "importlib-metadata==9.1.0", "python-dotenv==1.2.4", "fastapi==0.165.0",
          "starlette==1.10.0", "uvicorn==0.55.0", "annotated-doc==0.0.7", "pandas==3.1.1", "pydicom==3.0.2",
          "ttach==0.0.3", "cryptography==50.0.2", "cffi==2.1.1", "pycparser==3.12"]
SDISTS = ["grad-cam==1.5.7"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]
LIMIT = 64 * 2**20
STAGES = ["fetch", "dedupe", "validate", "split", "preprocess"]


def wheels(dest: Path, python_version: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", python_version, "--implementation", "cp", *platform, "-d", str(dest),
                    *WHEELS], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), *SDISTS], check=True)


def processed(dest: Path, data: Path) -> None:
    """The rehearsal profile's stages fetch..preprocess in a scratch project; its data/processed copied to dest."""
    params = yaml.safe_load((REPO / "configs" / "rehearsal.yaml").read_text())
    for source in params["fetch"]["sources"]:
        source["path"] = str((data / Path(source["path"]).relative_to("../shared/data")).resolve())
    with tempfile.TemporaryDirectory(prefix="lungxray-gpu-prepare-") as tmp:
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for stage in STAGES:
            subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=tmp, check=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(Path(tmp) / "data" / "processed", dest)


def sample_files(dest: Path, data: Path) -> None:
    """A PNG, a JPEG (as published) and a DICOM (written from a JPEG's grey pixels) of real X-rays."""
    from lungxray.images.dicom import write_dicom

    dest.mkdir(parents=True, exist_ok=True)
    jpegs = sorted((data / "jtiptj_test" / "PNEUMONIA").glob("*.jpeg"))
    pngs = sorted((data / "jtiptj_test").rglob("*.png"))
    if not jpegs or not pngs:
        raise SystemExit(f"{data}/jtiptj_test holds no JPEG or PNG X-ray: pass --data ../shared/data")
    for src, name in ((jpegs[0], f"xray{jpegs[0].suffix}"), (pngs[0], "xray.png")):
        (dest / name).unlink(missing_ok=True)  # the copy keeps the source's read-only mode
        shutil.copy(src, dest / name)
    grey = Image.open(jpegs[1]).convert("L")
    grey.thumbnail((512, 512))
    write_dicom(dest / "xray.dcm", np.asarray(grey))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--skip", default="", help="comma-separated parts to keep as they are: wheels, processed, files")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is missing: the real X-rays of ../shared/data are needed")
    if "wheels" not in skip:
        wheels(GPU / "wheels", args.python_version)
    if "processed" not in skip:
        processed(GPU / "processed", args.data.resolve())
    if "files" not in skip:
        sample_files(GPU / "files", args.data)
    size = sum(p.stat().st_size for p in GPU.rglob("*") if p.is_file())
    print(f"{GPU}: {size / 2**20:.1f} MiB" + ("" if size < LIMIT - 4 * 2**20 else
                                               " -- too close to the device tool's 64 MiB with the working tree"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
