"""Fake Kaggle downloads: point kagglehub at a local :class:`helpers.httpserver.FileServer`, and zip archives laid out
as the real Kaggle data sets of the seed profiles are (their folder layouts, real X-rays in each class folder)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def use_fake_kaggle(monkeypatch, tmp_path: Path, url: str) -> None:
    """kagglehub talks to ``url`` (the Kaggle API's TEST endpoint), caches under ``tmp_path``, with no credentials."""
    from kagglesdk import kaggle_env

    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.TEST, url)
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub-cache"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def real_xrays(shared: Path, n: int) -> list[bytes]:
    """``n`` small real chest X-rays (400x300 JPEGs of ../shared/data/skytells_covid19_xray), each distinct."""
    files = sorted((shared / "skytells_covid19_xray" / "NonAugmentedTrain").glob("*/*.jpeg"))[:n]
    assert len(files) == n, f"../shared/data holds fewer than {n} skytells images"
    return [f.read_bytes() for f in files]


def _members(paths: list[str], xrays: list[bytes], extra: dict[str, bytes]) -> dict[str, bytes]:
    return {**{p: xrays[i % len(xrays)] for i, p in enumerate(paths)}, **extra}


# Each layout: the files of the real archive (one or two per class folder), plus what the profile must leave out.
def covid19_radiography(xrays: list[bytes]) -> dict[str, bytes]:
    base = "COVID-19_Radiography_Dataset"
    classes = {"COVID": "COVID", "Lung_Opacity": "Lung_Opacity", "Normal": "Normal",
               "Viral Pneumonia": "Viral Pneumonia"}
    images = [f"{base}/{c}/images/{stem}-{i}.png" for c, stem in classes.items() for i in (1, 2)]
    masks = {f"{base}/{c}/masks/{stem}-1.png": xrays[0] for c, stem in classes.items()}
    sheets = {f"{base}/{c}.metadata.xlsx": b"PK\x03\x04 not parsed" for c in classes}
    return _members(images, xrays, {**masks, **sheets, f"{base}/README.md.txt": b"COVID-19 Radiography Database"})


def kermany_pneumonia(xrays: list[bytes]) -> dict[str, bytes]:
    names = {"NORMAL": ["IM-0115-0001.jpeg", "NORMAL2-IM-0372-0001.jpeg"],
             "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_6.jpeg"]}
    images = [f"chest_xray/{s}/{c}/{n}" for s in ("train", "val", "test") for c, ns in names.items() for n in ns]
    repeat = {f"chest_xray/chest_xray/train/{c}/{n}": xrays[0] for c, ns in names.items() for n in ns}
    mac = {f"__MACOSX/chest_xray/train/NORMAL/._{names['NORMAL'][0]}": b"\x00\x05\x16\x07 resource fork"}
    return _members(images, xrays, {**repeat, **mac, "chest_xray/train/.DS_Store": b"\x00\x00"})


def prashant_covid_pneumonia(xrays: list[bytes]) -> dict[str, bytes]:
    images = [f"Data/{s}/{c}/{c}({i}).jpg" for s in ("train", "test") for c in ("COVID19", "NORMAL", "PNEUMONIA")
              for i in (1, 2)]
    return _members(images, xrays, {})


def tb_chest_xray(xrays: list[bytes]) -> dict[str, bytes]:
    base = "TB_Chest_Radiography_Database"
    images = [f"{base}/{c}/{c}-{i}.png" for c in ("Normal", "Tuberculosis") for i in (1, 2)]
    sheets = {f"{base}/{c}.metadata.xlsx": b"PK\x03\x04 not parsed" for c in ("Normal", "Tuberculosis")}
    return _members(images, xrays, {**sheets, f"{base}/README.md.txt": b"TB database"})


def jtiptj_4class(xrays: list[bytes]) -> dict[str, bytes]:
    names = {"COVID19": "COVID19(0).jpg", "NORMAL": "IM-0001-0001.jpeg", "PNEUMONIA": "person3_virus_15.jpeg",
             "TURBERCULOSIS": "Tuberculosis-1.png"}
    images = [f"{s}/{c}/{n}" for s in ("train", "val", "test") for c, n in names.items()]
    return _members(images, xrays, {})


# Kaggle handle -> its archive builder
LAYOUTS = {
    "tawsifurrahman/covid19-radiography-database": covid19_radiography,
    "paultimothymooney/chest-xray-pneumonia": kermany_pneumonia,
    "prashant268/chest-xray-covid19-pneumonia": prashant_covid_pneumonia,
    "tawsifurrahman/tuberculosis-tb-chest-xray-dataset": tb_chest_xray,
    "jtiptj/chest-xray-pneumoniacovid19tuberculosis": jtiptj_4class,
}
