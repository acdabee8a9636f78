"""The seed papers' published figures beside lungxray's, one row per model of each seed profile (configs/seed-*.yaml).

    make run CONFIG=configs/seed-002.yaml                        # Kaggle credentials; a GPU advised
    make run CONFIG=configs/seed-004-pneumoniamnist.yaml         # offline, ../shared/data, minutes on a CPU
    python benchmarks/seeds/report.py --record seed-002          # store that run's figures in results/seed-002.json
    python benchmarks/seeds/report.py [--update-docs]            # the table (docs/seeds.md between the seed markers)

Columns (accuracy = micro recall, on the test split, [95% bootstrap interval over split units]):

* published: the paper's figure as issue 12 quotes it, with "= always <class>" when it equals, at the precision it is
  given with, what a constant classifier scores on the paper's test set (:data:`TEST_COUNTS`);
* no-skill on that test set: the majority class's share of the paper's test set, where its class counts are known
  (what answering that class every time scores); "-" otherwise;
* lungxray, same setup: the paper's split. Only seed 004's is one lungxray can make (the data set's own test folder,
  ``split.keep_official_test``); the others drew images at random from sets holding copies and several X-rays per
  patient, a split lungxray's leakage check refuses, so the cell says why it is not reproducible;
* lungxray, deduplicated, leakage-free split: the profile's run (copies and patients on one side only);
* lungxray, val: the same run's val figures (where the test split is held back, the only ones), each lungxray
  accuracy with its lift over the majority class of the same images [interval] (``lift_*`` of eval.json:
  :mod:`lungxray.evaluate.metrics.no_skill`), flagged "no better than always answering <class>" where its interval
  holds that class's share;
* external: leave-one-source-out (``reports/external.json`` of the same run: mean macro recall over the held-out
  sources, a different metric), or "-" when that stage did not run or the profile has one source only;
* cost: epochs run (best epoch), seconds per epoch and the device, trainable parameters (train.json).

Cells that hold no figure say why: "not reproducible" (the paper's split leaks: lungxray refuses it), "not run" (no run
recorded: the Kaggle profiles need credentials and, in practice, a GPU), "val only: test held back" (the run was
recorded on a copy of the data without its test split, e.g. ../shared/data's PneumoniaMNIST).

``--record`` reads metrics/<model>/eval.json and train.json of every model in train.models and refuses unless
params.yaml is the profile (``make run CONFIG=...`` copies it there): a figure is never filed under another profile.
The one difference allowed is the file of a MedMNIST source (``fetch.sources[].path``: the full official file instead
of ../shared/data's copy without the test split). Nothing in the table is typed by hand except the published figures
and the published test sets' class counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from lungxray.evaluate.metrics.no_skill import constant_classifier_match

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
START, END = "<!-- seed-results:start -->", "<!-- seed-results:end -->"

# profile -> {model: published test accuracy (issue 12's quotes of the seed papers)}
PUBLISHED = {
    "seed-000": {"efficientnetv2_s": 0.9867},
    "seed-002": {"cnn5": 0.90, "resnet18_f1": 0.95},
    "seed-003": {"vgg16": 0.944, "inception_resnet_v2": 0.719, "mobilenetv2": 0.728},
    "seed-004": {"cnn8": 0.375, "cnn13": 0.625, "resnet34": 0.795},
    "seed-004-pneumoniamnist": {"cnn8": 0.375, "cnn13": 0.625, "resnet34": 0.795},  # the same paper, its data's copy
}
# profile -> why the paper's split cannot be made (None: the profile's run is the paper's split)
NOT_REPRODUCIBLE = {
    "seed-000": "random 10% of merged sets that re-publish one another (copies on both sides)",
    "seed-002": "random stratified split of a database holding copies",
    "seed-003": "random 25% of images (one child's X-rays on both sides)",
    "seed-004": None,
    "seed-004-pneumoniamnist": None,
}
# profile -> class counts of the paper's test set, where known (seed 004: the Guangzhou set's test folder, which is
# also PneumoniaMNIST's official test split)
TEST_COUNTS = {
    "seed-004": {"normal": 234, "pneumonia": 390},
    "seed-004-pneumoniamnist": {"normal": 234, "pneumonia": 390},
}
NOT_RUN, VAL_ONLY, NOT_REPRODUCIBLE_CELL = "not run", "val only: not measured here (test held back)", "not reproducible"


def accuracy_cell(m: dict | None) -> str:
    """``87.5% [82.5, 92.5] (n=620)``, then the lift over the majority class of the same images (or the flag)."""
    if not m or m.get("accuracy") is None:
        return "not measured"
    lo, hi = m.get("accuracy_ci_low"), m.get("accuracy_ci_high")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{100 * m['accuracy']:.1f}%{ci} (n={m['n_samples']}){lift_text(m)}"


def lift_text(m: dict) -> str:
    """``; +21.2 points [19.0, 23.4] over always pneumonia (74.2%)``, the flag, or "" for a run recorded without it."""
    base, lift = m.get("majority_class"), m.get("lift_over_majority")
    if base is None or lift is None:
        return ""
    share = f"{100 * m['majority_share']:.1f}%"
    if m.get("no_better_than_majority"):
        return f"; **no better than always answering {base}** ({share})"
    lo, hi = m.get("lift_ci_low"), m.get("lift_ci_high")
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None and hi is not None else ""
    return f"; {100 * lift:+.1f} points{ci} over always {base} ({share})"


FIGURE_KEYS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_recall", "n_samples", "lift_over_majority",
               "lift_ci_low", "lift_ci_high", "no_better_than_majority")
COST_KEYS = ("trainable_parameters", "epochs_run", "epochs_to_converge", "seconds_per_epoch", "device")


def split_figures(figures: dict | None) -> dict | None:
    """The figures of one split that the table shows (None: the split was not evaluated)."""
    if not figures:
        return None
    base = figures.get("no_skill") or {}
    return {**{k: figures.get(k) for k in FIGURE_KEYS}, "majority_class": base.get("majority_class"),
            "majority_share": base.get("majority_share")}


def same_profile(params: dict, wanted: dict) -> bool:
    """``params`` is the profile, a MedMNIST source's file aside (the full official file or the copy without test)."""
    def strip(d: dict) -> dict:
        d = json.loads(json.dumps(d))
        for s in (d.get("fetch") or {}).get("sources") or []:
            if s.get("kind") == "medmnist":
                s.pop("path", None)
        return d
    return strip(params) == strip(wanted)


def record(profile: str, params_path: Path, metrics: Path, external: Path) -> dict:
    """The figures of the run in ``metrics/`` of ``profile`` (refused unless params.yaml is the profile)."""
    wanted = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())
    if not same_profile(yaml.safe_load(params_path.read_text()), wanted):
        raise SystemExit(f"{params_path} is not configs/{profile}.yaml: run `make run CONFIG=configs/{profile}.yaml` "
                         f"first (it copies the profile over params.yaml), then record")
    ext = (json.loads(external.read_text()).get("summary") or {}) if external.exists() else {}
    models = {}
    for name in wanted["train"]["models"]:
        ev_path, tr_path = metrics / name / "eval.json", metrics / name / "train.json"
        if not ev_path.exists() or not tr_path.exists():
            raise SystemExit(f"{ev_path} or {tr_path} is missing: the run of {profile} did not finish (dvc repro)")
        ev, tr = json.loads(ev_path.read_text()), json.loads(tr_path.read_text())
        models[name] = {**{split: split_figures(ev.get(split)) for split in ("test", "test_official", "val")},
                        "external_macro_recall": (ext.get(name) or {}).get("mean_macro_recall"),
                        **{k: tr.get(k) for k in COST_KEYS}}
    return {"profile": profile, "models": models}


def profile_models(profile: str) -> list[str]:
    """The published models first, then the profile's other models (e.g. the rest of a freeze sweep)."""
    listed = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())["train"]["models"]
    return list(dict.fromkeys([*PUBLISHED[profile], *listed]))


def published_cell(profile: str, model: str) -> str:
    pub = PUBLISHED[profile].get(model)
    if pub is None:
        return "-"
    cell = f"{100 * pub:.2f}".rstrip("0").rstrip(".") + "%"
    same = constant_classifier_match(pub, TEST_COUNTS[profile]) if profile in TEST_COUNTS else None
    return cell + (f" (= always {same})" if same else "")


def no_skill_cell(profile: str) -> str:
    counts = TEST_COUNTS.get(profile)
    if not counts:
        return "-"
    major = max(counts, key=counts.get)
    mix = " / ".join(f"{n} {c}" for c, n in counts.items())
    return f"always {major}: {100 * counts[major] / sum(counts.values()):.1f}% ({mix})"


def cost_cell(r: dict) -> str:
    if r.get("seconds_per_epoch") is None:
        return "-"
    params = f"; {r['trainable_parameters']:,} params" if r.get("trainable_parameters") is not None else ""
    return (f"{r.get('epochs_run') or '?'} epochs (best {r.get('epochs_to_converge')}), "
            f"{r['seconds_per_epoch']:.1f} s/epoch on {r.get('device') or '?'}{params}")


def row_cells(profile: str, r: dict | None) -> tuple[str, str, str, str, str]:
    """same setup, deduplicated, val, external, cost of one model (``r``: its recorded figures; None: no run)."""
    if r is None:
        same = NOT_REPRODUCIBLE_CELL if NOT_REPRODUCIBLE[profile] else NOT_RUN
        return same, NOT_RUN, NOT_RUN, NOT_RUN, "-"
    dedup = accuracy_cell(r.get("test")) if r.get("test") else VAL_ONLY
    official = r.get("test_official")  # benchmark mode: the whole official test set, as the paper tested
    same = NOT_REPRODUCIBLE_CELL if NOT_REPRODUCIBLE[profile] else (accuracy_cell(official) if official else dedup)
    e = r.get("external_macro_recall")
    return (same, dedup, accuracy_cell(r.get("val")) if r.get("val") else "-",
            f"macro recall {e:.3f}" if e is not None else "-", cost_cell(r))


def table(results_dir: Path) -> str:
    lines = ["| profile | model | published | no-skill on that test set | lungxray, same setup | lungxray, "
             "deduplicated, leakage-free split | lungxray, val | external (leave-one-source-out) | cost |",
             "|---|---|---:|---|---|---|---|---|---|"]
    for profile in PUBLISHED:
        path = results_dir / f"{profile}.json"
        run = json.loads(path.read_text())["models"] if path.exists() else None
        for model in profile_models(profile):
            cells = row_cells(profile, None if run is None else run.get(model) or {})
            lines.append(f"| {profile} | {model} | {published_cell(profile, model)} | {no_skill_cell(profile)} | "
                         + " | ".join(cells) + " |")
    lines += ["", "Accuracy (= micro recall), [95% bootstrap interval over split units], n = images, then the lift "
              "over the majority class of the same images (accuracy minus its share: what answering that class every "
              "time scores) [interval on the same resamples]. Published: as issue 12 quotes the seed papers; \"= "
              "always <class>\" when the figure is exactly what a constant classifier scores on the paper's test "
              "set. seed-004 keeps the data set's own test folder (the paper's), so one run fills both lungxray "
              "columns; seed-004-pneumoniamnist runs the same models on PneumoniaMNIST, whose official test split "
              "is that folder (624 images at 28 px), offline. \"not reproducible\": the paper's split leaks (below); "
              "\"not run\": no run recorded (the Kaggle profiles need credentials and, in practice, a GPU); \"val "
              "only: test held back\": recorded on ../shared/data's copy, which has no test split (give the full "
              "official file to fill the test columns). Record a run with `python benchmarks/seeds/report.py "
              "--record <profile>`."]
    lines += [f"- {p}, same setup {why}" for p, why in NOT_REPRODUCIBLE.items() if why]
    return "\n".join(lines)


def update_doc(doc: Path, md: str) -> None:
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    doc.write_text(head + START + "\n" + md + "\n" + END + rest.split(END, 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", choices=sorted(PUBLISHED), help="store the figures of the run in metrics/")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--metrics", type=Path, default=REPO / "metrics")
    ap.add_argument("--external", type=Path, default=REPO / "reports" / "external.json")
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--update-docs", "--update-readme", action="store_true", dest="update_docs",
                    help="write the table into --doc between the seed markers (--update-readme: the former name)")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "seeds.md", help="the Markdown file holding the markers")
    args = ap.parse_args()
    if args.record:
        args.results.mkdir(parents=True, exist_ok=True)
        out = record(args.record, args.params, args.metrics, args.external)
        (args.results / f"{args.record}.json").write_text(json.dumps(out, indent=2) + "\n")
    md = table(args.results)
    print(md)
    if args.update_docs:
        update_doc(args.doc, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
