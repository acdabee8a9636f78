from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lungxray.cli.params_check import load_params, parse_params
from lungxray.core.errors import ConfigError

from conftest import REPO

FOLDER = {"name": "a", "kind": "folder", "path": "x", "labels": {"NORMAL": "normal"}}


def err(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_params(data)
    return str(e.value)


@pytest.mark.parametrize("path", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_params_files_are_valid(path):
    params = load_params(path)
    assert params.fetch.sources


def test_unknown_key_is_named():
    msg = err({"fetch": {"sources": [FOLDER], "max_pixel": 5}})
    assert "fetch.max_pixel" in msg and "unknown key" in msg


def test_unknown_key_inside_a_source_is_named():
    msg = err({"fetch": {"sources": [{**FOLDER, "lables": {}}]}})
    assert "fetch.sources[0].lables" in msg


def test_wrong_type_names_key_and_expected_type():
    msg = err({"fetch": {"sources": [FOLDER], "max_pixels": "lots"}})
    assert "fetch.max_pixels" in msg and "integer" in msg and "'lots'" in msg


def test_unknown_source_kind():
    msg = err({"fetch": {"sources": [{**FOLDER, "kind": "kagle"}]}})
    assert "fetch.sources[0]" in msg and "kaggle" in msg


def test_label_must_map_to_a_class_or_drop():
    msg = err({"fetch": {"sources": [{**FOLDER, "labels": {"NORMAL": "healthy"}}]}})
    assert "'healthy'" in msg and "not a class" in msg


def test_duplicate_source_names():
    assert "unique" in err({"fetch": {"sources": [FOLDER, FOLDER]}})


def test_patient_regex_needs_a_group():
    assert "capture group" in err({"fetch": {"sources": [{**FOLDER, "patient": {"regex": "person"}}]}})


def test_archive_needs_exactly_one_location():
    msg = err({"fetch": {"sources": [{"name": "z", "kind": "archive", "sha256": "a" * 64, "labels": {}}]}})
    assert "exactly one of 'path' or 'url'" in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fetch: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_unknown_section():
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["fecth"] = {}
    assert "fecth" in err(data)


@pytest.mark.parametrize("path", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_param_dvc_tracks_is_written_out(path):
    """DVC reads the params a stage depends on from the file itself (not our defaults): each must be present."""
    data = yaml.safe_load(path.read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = data
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{path.name} lacks '{key}' (stage {name})"
                node = node[part]


# --- one section per stage, the whole file by `lungxray check-params` ------------------------------------------------


@pytest.mark.parametrize("path", [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_check_params_accepts_params_yaml_and_every_profile(path, capsys):
    from lungxray.cli.commands import main

    assert main(["check-params", "--params", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_check_params_rejects_an_unknown_key_and_names_it(tmp_path, capsys):
    from lungxray.cli.commands import main

    data = yaml.safe_load((REPO / "params.yaml").read_text())
    data["dedupe"]["wokers"] = 2
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["check-params", "--params", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "dedupe.wokers" in err and "unknown key" in err


def test_a_stage_loads_only_its_own_section_and_an_error_names_the_key(tmp_path):
    from lungxray.core.config import load_section
    from lungxray.data.dedupe import DedupeParams

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"dedupe": {"workers": "many"}, "train": {"not_a_key": 1}}))
    with pytest.raises(ConfigError) as e:
        load_section("dedupe", DedupeParams, path)
    assert "dedupe.workers" in str(e.value) and "'many'" in str(e.value) and "train" not in str(e.value)
    path.write_text(yaml.safe_dump({"dedupe": {"workers": 3}, "train": {"not_a_key": 1}}))
    assert load_section("dedupe", DedupeParams, path).workers == 3


def test_the_config_and_the_fetch_stage_do_not_import_torch():
    import subprocess
    import sys

    code = ("import runpy, sys; sys.argv = ['fetch']; import lungxray.core.config, lungxray.data.fetch; "
            "runpy.run_path('stages/fetch.py', run_name='not_main'); "
            "print(sorted(m for m in ('torch', 'lungxray.train', 'lungxray.data.dedupe') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_duplicate_key_is_refused_with_the_line_numbers_of_both(tmp_path, capsys):
    """YAML keeps the last of two equal keys without a word: `epochs: 2` then `epochs: 50` would train 50 epochs."""
    from lungxray.cli.commands import main

    text = (REPO / "params.yaml").read_text()
    assert "\ntrain:\n" in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("\ntrain:\n", "\ntrain:\n  epochs: 2\n  epochs: 50\n", 1))
    first = path.read_text().splitlines().index("  epochs: 2") + 1
    with pytest.raises(ConfigError) as e:
        load_params(path)
    msg = str(e.value)
    assert "'epochs'" in msg and f"line {first}" in msg and f"line {first + 1}" in msg and str(path) in msg
    assert main(["check-params", "--params", str(path)]) == 2
    assert f"line {first + 1}" in capsys.readouterr().err


def test_a_duplicate_section_is_refused_and_a_merge_key_override_is_not_a_duplicate(tmp_path):
    from lungxray.core.config import read_params_file

    path = tmp_path / "params.yaml"
    path.write_text("dedupe:\n  workers: 1\nsplit: {}\ndedupe:\n  workers: 2\n")
    with pytest.raises(ConfigError, match=r"'dedupe'.*line 1.*line 4"):
        read_params_file(path)
    path.write_text("base: &b\n  workers: 1\n  conflict_policy: drop\ndedupe:\n  <<: *b\n  workers: 2\n")
    assert read_params_file(path)["dedupe"] == {"workers": 2, "conflict_policy": "drop"}


def test_every_params_field_has_a_description():
    from lungxray.cli.params_doc import params_models, sections
    from lungxray.core.config import ArchiveSource, FolderSource, KaggleSource, MedmnistSource
    from lungxray.train.settings import AugmentParams, TrainParams, Variant

    models = params_models()
    assert set(sections()) == {"fetch", "dedupe", "validate", "split", "preprocess", "shortcut", "train",
                               "calibration", "evaluate", "external", "promote", "gate", "ensemble"}
    assert {FolderSource, KaggleSource, ArchiveSource, MedmnistSource, TrainParams, AugmentParams,
            Variant} <= set(models)
    missing = [f"{m.__module__}.{m.__name__}.{name}" for m in models for name, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert not missing, f"{len(missing)} params field(s) without a description: {missing}"
