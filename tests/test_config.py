from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lungxray.config import load_params, parse_params
from lungxray.errors import ConfigError

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
