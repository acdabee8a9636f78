"""The seed papers' published figures beside lungxray's, one row per model of each seed profile (configs/seed-*.yaml).

    make run CONFIG=configs/seed-002.yaml                        # Kaggle credentials; a GPU advised
    python benchmarks/seeds/report.py --record seed-002          # store that run's figures in results/seed-002.json
    python benchmarks/seeds/report.py [--update-docs]            # the table (docs/seeds.md between the seed markers)

Columns (accuracy = micro recall, on the test split, [95% bootstrap interval over split units]):

* published: the paper's figure as issue 12 quotes it;
* lungxray, same setup: the paper's split. Only seed 004's is one lungxray can make (the data set's own test folder,
  ``split.keep_official_test``); the others drew images at random from sets holding copies and several X-rays per
  patient, a split lungxray's leakage check refuses, so the cell says why it is not reproducible;
* lungxray, deduplicated, leakage-free split: the profile's run (copies and patients on one side only);
* external: leave-one-source-out (``reports/external.json`` of the same run: mean macro recall over the held-out
  sources, a different metric), or "-" when that stage did not run or the profile has one source only.

``--record`` reads metrics/<model>/eval.json and train.json of every model in train.models and refuses unless
params.yaml is the profile (``make run CONFIG=...`` copies it there): a figure is never filed under another profile.
Nothing in the table is typed by hand except the published figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
START, END = "<!-- seed-results:start -->", "<!-- seed-results:end -->"

# profile -> {model: published test accuracy (issue 12's quotes of the seed papers)}
PUBLISHED = {
    "seed-000": {"efficientnetv2_s": 0.9867},
    "seed-002": {"cnn5": 0.90, "resnet18_f1": 0.95},
    "seed-003": {"vgg16": 0.944, "inception_resnet_v2": 0.719, "mobilenetv2": 0.728},
    "seed-004": {"cnn8": 0.375, "cnn13": 0.625, "resnet34": 0.795},
}
# profile -> why the paper's split cannot be made (None: the profile's run is the paper's split)
NOT_REPRODUCIBLE = {
    "seed-000": "random 10% of merged sets that re-publish one another (copies on both sides)",
    "seed-002": "random stratified split of a database holding copies",
    "seed-003": "random 25% of images (one child's X-rays on both sides)",
    "seed-004": None,
}


def accuracy_cell(m: dict | None) -> str:
    if not m or m.get("accuracy") is None:
        return "not measured"
    lo, hi = m.get("accuracy_ci_low"), m.get("accuracy_ci_high")
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return f"{100 * m['accuracy']:.1f}%{ci} (n={m['n_samples']})"


def record(profile: str, params_path: Path, metrics: Path, external: Path) -> dict:
    """The figures of the run in ``metrics/`` of ``profile`` (refused unless params.yaml is the profile)."""
    wanted = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())
    if yaml.safe_load(params_path.read_text()) != wanted:
        raise SystemExit(f"{params_path} is not configs/{profile}.yaml: run `make run CONFIG=configs/{profile}.yaml` "
                         f"first (it copies the profile over params.yaml), then record")
    ext = (json.loads(external.read_text()).get("summary") or {}) if external.exists() else {}
    models = {}
    for name in wanted["train"]["models"]:
        ev_path, tr_path = metrics / name / "eval.json", metrics / name / "train.json"
        if not ev_path.exists() or not tr_path.exists():
            raise SystemExit(f"{ev_path} or {tr_path} is missing: the run of {profile} did not finish (dvc repro)")
        ev, tr = json.loads(ev_path.read_text()), json.loads(tr_path.read_text())
        keys = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_recall", "n_samples")
        models[name] = {"test": {k: (ev.get("test") or {}).get(k) for k in keys} if ev.get("test") else None,
                        "external_macro_recall": (ext.get(name) or {}).get("mean_macro_recall"),
                        **{k: tr.get(k) for k in ("trainable_parameters", "epochs_to_converge", "seconds_per_epoch",
                                                  "device")}}
    return {"profile": profile, "models": models}


def profile_models(profile: str) -> list[str]:
    """The published models first, then the profile's other models (e.g. the rest of a freeze sweep)."""
    listed = yaml.safe_load((REPO / "configs" / f"{profile}.yaml").read_text())["train"]["models"]
    return list(dict.fromkeys([*PUBLISHED[profile], *listed]))


def table(results_dir: Path) -> str:
    lines = ["| profile | model | published | lungxray, same setup | lungxray, deduplicated, leakage-free split | "
             "external (leave-one-source-out) |", "|---|---|---:|---|---|---|"]
    for profile in PUBLISHED:
        path = results_dir / f"{profile}.json"
        run = json.loads(path.read_text())["models"] if path.exists() else None
        for model in profile_models(profile):
            pub = PUBLISHED[profile].get(model)
            pub_cell = f"{100 * pub:.2f}".rstrip("0").rstrip(".") + "%" if pub is not None else "-"
            if run is None:
                dedup, ext = "not run", "not run"
            else:
                r = run.get(model) or {}
                dedup = accuracy_cell(r.get("test"))
                e = r.get("external_macro_recall")
                ext = f"macro recall {e:.3f}" if e is not None else "-"
            same = "not reproducible" if NOT_REPRODUCIBLE[profile] else dedup
            lines.append(f"| {profile} | {model} | {pub_cell} | {same} | {dedup} | {ext} |")
    lines += ["", "Accuracy (= micro recall) on the test split, [95% bootstrap interval over split units], n = test "
              "images. Published: as issue 12 quotes the seed papers. seed-004 keeps the data set's own test folder "
              "(the paper's), so one run fills both lungxray columns. \"not run\": the profile needs Kaggle "
              "credentials and, in practice, a GPU; record a run with `python benchmarks/seeds/report.py --record "
              "seed-00N`."]
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
