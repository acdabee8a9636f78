"""The run report (issue 22): one self-contained HTML page that a reviewer can trust: it opens offline with no request
leaving the file, every number of its summary is the one in the JSON it names, the checklist answers no item without
the evidence, it is logged with the champion's MLflow version, and a missing input is told, not hidden."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from lungxray.core.errors import LungxrayError
from lungxray.core.tracking import MlflowParams
from lungxray.evaluate.evaluation import EvaluateParams, evaluate_model
from lungxray.report.build import SECTIONS, build_report
from lungxray.report.checklist import ITEMS
from lungxray.report.page import pointer
from lungxray.train.fit import train_model

from conftest import REPO
from helpers.multisource import make_multisource_processed
from helpers.processed import train_params
from helpers.stages import run_stage_script

MODELS = ("cnn5",)
EVAL = EvaluateParams(bootstrap=50, latency_batches=1, batch_size=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small real run: a tiny three-source data set, cnn5 trained one epoch and evaluated, then the compare,
    register and report stages (no fetch, dedupe, split, shortcut nor external outputs: the report says so)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("report")
    processed = make_multisource_processed(root / "data")
    ml = MlflowParams(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db", artifact_dir=str(root / "mlruns/art"))
    for name in MODELS:
        t = train_model(name, train_params(root, models=list(MODELS), epochs=1, mlflow=ml), processed,
                        root / "models" / name, root / "metrics" / name, progress=False)
        evaluate_model(name, processed, root / "models" / name / "model.pt", root / "metrics" / name,
                       root / "reports" / name, EVAL, t, ml)
    params = yaml.safe_load((REPO / "configs" / "shared-data.yaml").read_text())
    params["train"].update(models=list(MODELS), mlflow={"tracking_uri": ml.tracking_uri,
                                                        "artifact_dir": ml.artifact_dir})
    params["ensemble"] = {"enabled": False, "members": []}
    params["evaluate"] = EVAL.model_dump()
    params["promote"].update(registered_model="report-cxr", bootstrap=50)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage_script(root, "compare.py")
    run_stage_script(root, "register.py")
    out = run_stage_script(root, "report.py")
    return {"root": root, "stdout": out, "html": (root / "reports" / "report.html").read_text(encoding="utf-8"),
            "ml": ml}


# ---------------------------------------------------------------------------------------------------------------------
# reading the page back


class Page(HTMLParser):
    """The traced numbers (``<data>``) per section, the headings, the links, and the tags that would fetch."""

    def __init__(self):
        super().__init__()
        self.section: str | None = None
        self.numbers: list[dict] = []
        self.headings: list[str] = []
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.fetching: list[str] = []
        self._in_h2 = self._in_data = False
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self.section = a.get("id")
        if tag == "h2":
            self._in_h2, self._text = True, ""
        if tag == "data":
            self._in_data, self._text = True, ""
            self.numbers.append({**a, "section": self.section})
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.fetching.append(tag)
        for attr in ("src", "href", "srcset", "poster"):
            v = a.get(attr) or ""
            if v and not v.startswith(("data:", "#")):
                self.fetching.append(f"{tag} {attr}={v[:80]}")

    def handle_data(self, data):
        if self._in_h2 or self._in_data:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._in_h2:
            self.headings.append(self._text.strip())
            self._in_h2 = False
        if tag == "data" and self._in_data:
            self.numbers[-1]["shown"] = self._text.strip()
            self._in_data = False


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    return p


def resolve(doc, key: str):
    """The value at the JSON pointer ``key`` of ``doc``."""
    for part in key.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


# ---------------------------------------------------------------------------------------------------------------------
# fast checks


def test_a_missing_required_input_stops_naming_the_stage_to_run(tmp_path):
    with pytest.raises(LungxrayError, match=r"reports/promotion.json is missing.*dvc repro register"):
        build_report(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/promotion.json").write_text(json.dumps({"champion_after": {"model": "cnn5"}}))
    with pytest.raises(LungxrayError, match=r"reports/leaderboard.json is missing.*dvc repro compare"):
        build_report(tmp_path)
    (tmp_path / "reports/leaderboard.json").write_text(json.dumps({"cnn5": {"rank": 1}}))
    with pytest.raises(LungxrayError, match=r"metrics/cnn5/eval.json is missing.*dvc repro evaluate@cnn5"):
        build_report(tmp_path)


def test_a_json_pointer_escapes_slashes_and_tildes():
    assert pointer("by_source", "a/b", "x~y") == "/by_source/a~1b/x~0y"
    assert resolve({"a/b": {"x~y": 3}}, pointer("a/b", "x~y")) == 3


def test_the_report_code_is_a_dependency_of_the_report_stage_only():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    using = sorted(name for name, s in stages.items()
                   if any(str(d).startswith("src/lungxray/report/") for d in s.get("deps", [])))
    assert using == ["report"]
    assert "reports/report.html" in json.dumps(stages["report"]["outs"])


def test_an_ensemble_champion_with_one_source_and_no_other_output_still_gives_every_section(tmp_path):
    """The ensemble as champion (no Grad-CAM of its own, no training curve), one source, no external folds, no
    figures, no params: every section is there and says what is absent and why."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "metrics/ensemble").mkdir(parents=True)
    row = {"rank": 1, "val_macro_recall": 0.8, "test_macro_recall": 0.7, "test_macro_recall_ci_low": 0.6,
           "test_macro_recall_ci_high": 0.8, "ensemble_of": "cnn5, cnn8", "external_macro_recall": None}
    (tmp_path / "reports/leaderboard.json").write_text(json.dumps({"ensemble": row, "cnn5": {**row, "rank": 2,
                                                                                           "ensemble_of": None}}))
    (tmp_path / "reports/promotion.json").write_text(json.dumps({
        "champion_after": {"model": "ensemble", "version": "3"}, "registered_model": "x", "reason": "the best",
        "compared": {"method": "paired_bootstrap"}}))
    per_class = {"normal": {"sensitivity": 0.9, "specificity": 0.8, "ppv": 0.7, "npv": 0.95, "auc": 0.9,
                            "support": 40}}
    (tmp_path / "metrics/ensemble/eval.json").write_text(json.dumps({
        "classes": ["normal"], "test": {"n_samples": 40, "per_class": per_class, "by_source": {"only": {}}},
        "warnings": []}))
    html, run = build_report(tmp_path)
    page = parse(html)
    assert page.headings == [f"{i}. {title}" for i, (_, title) in enumerate(SECTIONS, 1)]
    assert "the champion is the ensemble of cnn5, cnn8" in html
    assert "single_source" in html and "no_external" in html
    absent = " ".join(what for what, _ in run.absent)
    for what in ("fetch summary", "dedupe report", "split report", "shortcut check", "params", "Grad-CAM of cnn5"):
        assert what in absent, what
    assert "ev-external" not in page.ids and "ev-gradcam" not in page.ids


def test_every_checklist_item_is_answered_by_evidence_or_left_to_the_authors():
    for guideline, topic, item, evidence in ITEMS:
        assert guideline in ("CLAIM 2024", "TRIPOD+AI") and topic and item
        assert evidence is None or evidence.startswith("ev-")


# ---------------------------------------------------------------------------------------------------------------------
# the report of a small real run


@pytest.mark.slow
def test_the_report_has_every_section_embeds_its_figures_and_fetches_nothing(run):
    page = parse(run["html"])
    assert page.headings == [f"{i}. {title}" for i, (_, title) in enumerate(SECTIONS, 1)]
    assert not page.fetching, page.fetching
    assert "data:image/png;base64," in run["html"] and "<script" not in run["html"].lower()
    assert "@media print" in run["html"]
    assert len(run["html"].encode()) < 5_000_000


@pytest.mark.slow
def test_every_number_in_the_summary_equals_the_one_in_the_json_it_came_from(run):
    numbers = [n for n in parse(run["html"]).numbers if n["section"] == "summary"]
    assert len(numbers) >= 5  # the selection metric, the test figures with their intervals, the test size
    for n in numbers:
        source = json.loads((run["root"] / n["data-src"]).read_text())
        expected = resolve(source, n["data-key"])
        if "value" not in n:
            assert expected is None, n
            continue
        assert float(n["value"]) == pytest.approx(float(expected), rel=0, abs=0), n
        digits = len(n["shown"].split(".")[1]) if "." in n["shown"] else 0
        assert n["shown"] == (f"{float(expected):.{digits}f}" if digits else str(int(expected))), n


@pytest.mark.slow
def test_the_checklist_names_no_item_as_answered_without_a_section_that_answers_it(run):
    page = parse(run["html"])
    answered = [h for h in page.links if h.startswith("#ev-")]
    assert answered, "the run answers some items"
    for href in answered:
        assert href[1:] in page.ids, href
    # this run has no external folds: the external item is not answered
    assert "ev-external" not in page.ids and 'href="#ev-external"' not in run["html"]
    assert run["html"].count("to be answered by the authors") == sum(e is None for *_, e in ITEMS)


@pytest.mark.slow
def test_what_the_run_lacks_is_listed_as_absent_with_the_stage_that_writes_it(run):
    html = run["html"]
    for stage_name in ("fetch", "dedupe", "split", "external", "shortcut"):
        assert f"dvc repro {stage_name}" in html, stage_name
    assert "no_external" in html  # the limitation rule that fired, named


@pytest.mark.slow
def test_the_report_is_logged_with_the_champions_version_and_linked_from_its_description(run):
    from mlflow.tracking import MlflowClient

    from lungxray.core.tracking import mlflow_setup

    promotion = json.loads((run["root"] / "reports/promotion.json").read_text())
    mlflow_setup(run["ml"])
    client = MlflowClient()
    mv = client.get_model_version(promotion["registered_model"], promotion["champion_after"]["version"])
    assert f"runs:/{mv.run_id}/report/report.html" in mv.description
    assert "report/report.html" in [f.path for f in client.list_artifacts(mv.run_id, "report")]
    # the CLI rebuilds it (and a rebuild replaces the link instead of adding one)
    r = subprocess.run([sys.executable, "-m", "lungxray.cli", "report", "--out", "reports/again.html", "--mlflow"],
                       cwd=run["root"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stdout + r.stderr
    assert (run["root"] / "reports/again.html").stat().st_size > 10_000
    again = client.get_model_version(promotion["registered_model"], mv.version).description
    assert again.count("Run report:") == 1 and "again.html" in again


# ---------------------------------------------------------------------------------------------------------------------
# headless Chromium with the network blocked


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


def headless(html_file: Path, work: Path, *extra: str) -> subprocess.CompletedProcess:
    """Chromium headless on ``html_file`` with every host unresolvable and a dead proxy: nothing can leave."""
    args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", f"--user-data-dir={work / 'p'}",
            "--window-size=1200,1600", *extra, html_file.resolve().as_uri()]
    return subprocess.run(args, capture_output=True, text=True, timeout=180)


def page_requests(netlog: Path) -> list[str]:
    """The URLs a page asked for (Chromium's net log): requests started by a page (an initiator origin, ``null`` for
    a file) or in a file page's network isolation key; Chromium's own background requests have no initiator."""
    log = json.loads(netlog.read_text(errors="replace"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    out = []
    for e in log["events"]:
        p = e.get("params") or {}
        if e["type"] == start and "url" in p and (p.get("initiator", "not an origin") != "not an origin"
                                                  or "file://" in p.get("network_isolation_key", "")):
            out.append(p["url"])
    return out


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium_with_the_network_blocked(run, tmp_path):
    if chromium() is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    # the request log sees a page that fetches (the control), then none from the report
    control = tmp_path / "control.html"
    control.write_text('<h1>x</h1><img src="http://example.com/x.png">')
    headless(control, tmp_path, f"--log-net-log={tmp_path / 'control.json'}", f"--screenshot={tmp_path / 'c.png'}")
    assert page_requests(tmp_path / "control.json") == ["http://example.com/x.png"]
    html_file = run["root"] / "reports" / "report.html"
    netlog, shot = tmp_path / "net.json", tmp_path / "shot.png"
    r = headless(html_file, tmp_path, f"--log-net-log={netlog}", f"--screenshot={shot}")
    assert shot.is_file(), r.stderr[-2000:]
    assert page_requests(netlog) == [], "requests that left the file"
    from PIL import Image

    lo, hi = Image.open(shot).convert("L").getextrema()
    assert hi - lo > 100, "the screenshot is blank"
    dom = headless(html_file, tmp_path, "--dump-dom").stdout
    for i, (_, title) in enumerate(SECTIONS, 1):
        assert f"{i}. {title}" in dom.replace("&amp;", "&")
