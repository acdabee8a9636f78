"""PneumoniaMNIST results beside the published MedMNIST v2 table, from the pipeline's metrics files.

    python benchmarks/pneumoniamnist/report.py [--params configs/pneumoniamnist.yaml] [--update-docs]

Reads metrics/<model>/eval.json, train.json and history.csv of every model in the profile's train.models, then the
ensemble's (metrics/ensemble/, when the profile enables it: the mean probability of its members; run
`make benchmark-pneumoniamnist` first) and prints a Markdown table, with each model's test-time augmentation rows
when the profile sets `evaluate.tta`; --update-docs writes it into docs/benchmarks.md (--doc) between
the pneumoniamnist-results markers. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from lungxray.cli.params_check import load_params
from lungxray.ensemble.members import ENSEMBLE, evaluated_models

# MedMNIST v2 (Yang et al. 2023), PneumoniaMNIST, official test split: (AUC, ACC)
PUBLISHED = [
    ("ResNet-18 (28)", 0.944, 0.854), ("ResNet-18 (224)", 0.956, 0.864), ("ResNet-50 (28)", 0.948, 0.854),
    ("ResNet-50 (224)", 0.962, 0.884), ("auto-sklearn", 0.942, 0.855), ("AutoKeras", 0.947, 0.878),
    ("Google AutoML Vision", 0.991, 0.946),
]
# eval.json key -> the table's split column. The official test set whole (copies within it included) is the row
# comparable with the published figures; the deduplicated test split (one image per duplicate group) is beside it.
SPLIT_ROWS = [("val", "val"), ("test_official", "test, official"), ("test", "test, deduplicated")]
START, END = "<!-- pneumoniamnist-results:start -->", "<!-- pneumoniamnist-results:end -->"


def fmt(m: dict | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "not measured"
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f"{m[key]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def tta_rows(model: str, ev: dict, split: str, shown: str, size: int) -> list[str]:
    """The row of the same split with test-time augmentation (``evaluate.tta``), when the evaluation has one."""
    t = (ev.get("tta") or {}).get(split)
    if not t:
        return []
    return [f"| lungxray {model} ({size}) + TTA ({ev['tta']['mode']}) | {shown} ({ev[split]['n_samples']}) | "
            f"{fmt(t['tta'], 'macro_auc')} | {fmt(t['tta'], 'accuracy')} | this repository, metrics/{model}/eval.json "
            f"(tta) |"]


def table(params_path: str, metrics_root: Path) -> str:
    params = load_params(params_path)
    lines = ["| method | split | AUC | ACC | source |", "|---|---|---:|---:|---|"]
    for name, auc, acc in PUBLISHED:
        lines.append(f"| {name} | test (624) | {auc:.3f} | {acc:.3f} | MedMNIST v2, published |")
    notes = []
    for model in evaluated_models(params.ensemble, params.train.models):
        d = metrics_root / model
        if not (d / "eval.json").exists():
            raise SystemExit(f"{d / 'eval.json'} is missing: run `make benchmark-pneumoniamnist` first")
        ev = json.loads((d / "eval.json").read_text())
        tr = json.loads((d / "train.json").read_text())
        for split, shown in SPLIT_ROWS:
            m = ev.get(split)
            if m is None:
                if split != "val":
                    lines.append(f"| lungxray {model} ({params.preprocess.image_size}) | {shown} | not measured | "
                                 f"not measured | official test split held back in ../shared/data |")
                continue
            lines.append(f"| lungxray {model} ({params.preprocess.image_size}) | {shown} ({m['n_samples']}) | "
                         f"{fmt(m, 'macro_auc')} | {fmt(m, 'accuracy')} | this repository, metrics/{model}/eval.json |")
            lines += tta_rows(model, ev, split, shown, params.preprocess.image_size)
        if model == ENSEMBLE:
            notes.append(f"{model}: the mean probability of {', '.join(tr['members'])}, "
                         f"{tr['trainable_parameters']:,} parameters in all")
            continue
        hist = pd.read_csv(d / "history.csv")
        notes.append(f"{model}: {tr['epochs_run']} epochs, best epoch {tr['best_epoch']}, "
                     f"{hist.epoch_seconds.sum() / 60:.1f} min of training on {tr['device']} "
                     f"({tr.get('precision', 'float32')}), {tr['trainable_parameters']:,} parameters")
    lines.append("")
    lines.append("AUC: one-vs-rest ROC-AUC of P(pneumonia) (for two classes the macro AUC equals it); ACC: argmax; "
                 "[95% bootstrap interval]. Val figures are not test figures: the recipe was tuned on val, and "
                 "PneumoniaMNIST's test split is known to be harder than its val split.")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="configs/pneumoniamnist.yaml")
    ap.add_argument("--metrics", default="metrics")
    ap.add_argument("--update-docs", "--update-readme", action="store_true", dest="update_docs",
                    help="write the table into --doc between its markers (--update-readme: the former name)")
    ap.add_argument("--doc", default="docs/benchmarks.md", help="the Markdown file holding the markers")
    args = ap.parse_args()
    md = table(args.params, Path(args.metrics))
    print(md)
    if args.update_docs:
        doc = Path(args.doc)
        text = doc.read_text()
        if START not in text or END not in text:
            print(f"{doc} has no {START} ... {END} markers", file=sys.stderr)
            return 2
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(f"{head}{START}\n{md}\n{END}{tail}")
        print(f"{doc} updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
