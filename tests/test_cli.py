from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lungxray.cli.commands import main

from helpers.images import save, xray


def test_dedupe_command_on_plain_folders(tmp_path, capsys):
    a = xray(5, (160, 128))
    save(tmp_path / "site1" / "NORMAL" / "a.png", Image.fromarray(a))
    save(tmp_path / "site1" / "NORMAL" / "other.png", Image.fromarray(xray(99, (160, 128))))
    # the same X-ray, resized and re-encoded, published by another site
    save(tmp_path / "site2" / "Normal" / "copy.jpg", Image.fromarray(a).resize((120, 96)), quality=85)
    out = tmp_path / "groups.csv"
    rc = main(["dedupe", str(tmp_path / "site1"), str(tmp_path / "site2"), "--out", str(out), "--quiet",
               "--report", str(tmp_path / "r.json"), "--workers", "1"])
    assert rc == 0
    g = pd.read_csv(out).set_index("id")
    assert g.loc["site1/NORMAL/a.png", "group"] == g.loc["site2/Normal/copy.jpg", "group"]
    assert g.loc["site1/NORMAL/other.png", "group"] != g.loc["site1/NORMAL/a.png", "group"]
    # 'NORMAL' and 'Normal' are different labels to the dedupe: a label conflict, dropped by default
    assert g.index[g.kept].tolist() == ["site1/NORMAL/other.png"]
    assert json.loads((tmp_path / "r.json").read_text())["duplicates_removed"] == 1
    assert "groups table" in capsys.readouterr().out


def test_bad_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["dedupe", str(tmp_path / "nope"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_check_params(capsys):
    from conftest import REPO

    assert main(["check-params", str(REPO / "configs" / "shared-data.yaml")]) == 0
    assert "valid" in capsys.readouterr().out


def test_dedupe_command_without_labels_on_flat_folders(tmp_path):
    a = xray(7, (160, 128))
    save(tmp_path / "flat1" / "images" / "a.png", Image.fromarray(a))
    save(tmp_path / "flat2" / "pics" / "b.jpg", Image.fromarray(a), quality=90)
    out, rep = tmp_path / "g.csv", tmp_path / "r.json"
    args = ["dedupe", str(tmp_path / "flat1"), str(tmp_path / "flat2"), "--out", str(out), "--quiet", "--workers",
            "1", "--report", str(rep)]
    assert main(args) == 0
    assert json.loads(rep.read_text())["n_label_conflicts"] == 1  # 'images' vs 'pics' read as labels
    assert main(args + ["--labels", "none"]) == 0
    assert json.loads(rep.read_text())["n_label_conflicts"] == 0
    assert pd.read_csv(out).group.nunique() == 1


def test_dedupe_command_rejects_a_decompression_bomb_as_fetch_does(tmp_path, bomb_png, capsys, monkeypatch):
    from PIL import ImageFile

    from lungxray.core.schema import DEFAULT_MAX_PIXELS
    from lungxray.data.fetch.probing import probe

    save(tmp_path / "site" / "NORMAL" / "a.png", Image.fromarray(xray(5, (160, 128))))
    (tmp_path / "site" / "NORMAL" / "bomb.png").write_bytes(bomb_png.read_bytes())  # 13000x13000 in ~165 kB
    loaded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loaded.append(im.size) or real_load(im))
    rep = tmp_path / "r.json"
    assert main(["dedupe", str(tmp_path / "site"), "--out", str(tmp_path / "g.csv"), "--report", str(rep),
                 "--quiet", "--workers", "1"]) == 0
    assert (13000, 13000) not in loaded
    [bad] = json.loads(rep.read_text())["unreadable"]
    assert bad["id"] == "site/NORMAL/bomb.png"
    assert bad["error"] == probe(str(bomb_png), DEFAULT_MAX_PIXELS)["detail"]
    assert f"bomb.png: {bad['error']}" in capsys.readouterr().out
    assert main(["dedupe", str(tmp_path / "site"), "--out", str(tmp_path / "g.csv"), "--report", str(rep),
                 "--quiet", "--workers", "1", "--max-pixels", "20000"]) == 0  # a.png has 160x128 = 20480 pixels
    assert len(json.loads(rep.read_text())["unreadable"]) == 2


def test_dedupe_command_reports_an_empty_file_in_fetchs_words(tmp_path, capsys):
    from lungxray.data.fetch.probing import probe

    save(tmp_path / "site" / "NORMAL" / "a.png", Image.fromarray(xray(5, (160, 128))))
    empty = tmp_path / "site" / "NORMAL" / "empty.jpg"
    empty.write_bytes(b"")
    (tmp_path / "site" / "NORMAL" / "page.png").write_text("<html>not an image</html>")
    rep = tmp_path / "r.json"
    assert main(["dedupe", str(tmp_path / "site"), "--out", str(tmp_path / "g.csv"), "--report", str(rep),
                 "--quiet", "--workers", "1"]) == 0
    errors = {Path(u["path"]).name: u["error"] for u in json.loads(rep.read_text())["unreadable"]}
    assert errors == {"empty.jpg": "empty file (0 bytes)",
                      "page.png": "not an image: no image decoder recognises this file"}
    assert errors["empty.jpg"] == probe(str(empty), 10**8)["detail"]
    out = capsys.readouterr().out
    assert "empty.jpg: empty file (0 bytes)" in out and "BytesIO" not in out


def test_dedupe_command_ignores_a_file_type_that_fetch_ignores(tmp_path):
    from lungxray.core.schema import IMAGE_EXTENSIONS

    assert ".pgm" not in IMAGE_EXTENSIONS  # fetch does not read .pgm files: neither does the dedupe command
    save(tmp_path / "site" / "NORMAL" / "a.png", Image.fromarray(xray(5, (160, 128))))
    save(tmp_path / "site" / "NORMAL" / "b.pgm", Image.fromarray(xray(6, (160, 128))))
    out = tmp_path / "g.csv"
    assert main(["dedupe", str(tmp_path / "site"), "--out", str(out), "--quiet", "--workers", "1"]) == 0
    assert pd.read_csv(out)["id"].tolist() == ["site/NORMAL/a.png"]


NUMERIC_OPTIONS = [  # (command line, option, what it must say)
    (["predict", "x.png", "--batch-size", "0"], "--batch-size", "an integer >= 1"),
    (["predict", "x.png", "--batch-size", "-2"], "--batch-size", "an integer >= 1"),
    (["predict", "x.png", "--batch-size", "two"], "--batch-size", "an integer >= 1"),
    (["predict", "x.png", "--max-pixels", "0"], "--max-pixels", "an integer >= 1"),
    (["dedupe", "d", "--out", "g.csv", "--max-pixels", "0"], "--max-pixels", "an integer >= 1"),
    (["dedupe", "d", "--out", "g.csv", "--workers", "-1"], "--workers", "an integer >= 0"),
    (["mlflow-server", "--port", "0"], "--port", "an integer from 1 to 65535"),
    (["mlflow-server", "--port", "65536"], "--port", "an integer from 1 to 65535"),
    (["mlflow-server", "--pg-port", "-5"], "--pg-port", "an integer from 1 to 65535"),
    (["mlflow-server", "--workers", "0"], "--workers", "an integer >= 1"),
]


@pytest.mark.parametrize("argv, option, rule", NUMERIC_OPTIONS, ids=[" ".join(a) for a, _, _ in NUMERIC_OPTIONS])
def test_every_numeric_option_is_checked_before_the_command_runs(argv, option, rule, monkeypatch, capsys):
    from lungxray.cli import commands as cli

    for command in ("_cmd_predict", "_cmd_dedupe", "_cmd_mlflow_server"):
        monkeypatch.setattr(cli, command, lambda args: pytest.fail(f"{args.command} ran with {argv}"))
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {option}: must be {rule}, got {argv[-1]!r}" in err, err


def test_check_params_explain_prints_each_field(capsys):
    assert main(["check-params", "--explain", "train", "fetch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("train:\n") and "\nfetch:\n" in out and "\ndedupe:" not in out
    assert "train.epochs  [int >= 1]  default: 20\n      maximum epochs (early stopping may end sooner)" in out
    assert "train.augment.degrees" in out and "train.model_options.<name>.lr" in out
    assert "fetch.sources[kind=kaggle].dataset" in out and "fetch.sources[kind=medmnist].sha256" in out
    assert "(no description)" not in out


def test_check_params_explain_all_sections_and_unknown_section(capsys):
    assert main(["check-params", "--explain"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{s}:\n" in f"\n{out}" for s in ["fetch", "train", "evaluate", "promote", "gate", "ensemble"])
    assert main(["check-params", "--explain", "train", "trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown section(s) trian" in err and "fetch, dedupe, validate" in err
