"""DVC stage `split`: stratified, grouped (dedupe group + patient) train/val/test split with a leakage check."""

import json

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import FetchParams, load_sections
from lungxray.core.errors import LungxrayError
from lungxray.core.io import write_json
from lungxray.core.stage import run_stage
from lungxray.data.split import (
    SplitParams,
    make_split,
    official_test_set,
    require_validated,
    split_counts,
    split_counts_plot,
    write_split,
)


def main() -> None:
    params = load_sections({"fetch": FetchParams, "split": SplitParams})
    require_validated(schema.VALIDATION_REPORT, [schema.MANIFEST, schema.GROUPS])
    manifest = pd.read_csv(schema.MANIFEST, keep_default_na=False)
    groups = pd.read_csv(schema.GROUPS, keep_default_na=False)
    split_df, stats = make_split(manifest, groups, params.split, params.fetch.classes)
    if stats["leakage"]:
        raise LungxrayError("leakage check failed:\n" + "\n".join(f"  - {p}" for p in stats["leakage"]))
    counts = split_counts(split_df, params.fetch.classes)
    split_counts_plot(counts, schema.SPLIT_PLOT)
    write_json(schema.SPLIT_METRICS, counts)
    write_json(schema.SPLIT_REPORT, stats)
    official_test = official_test_set(manifest, groups, split_df, params.split)
    write_split(official_test, schema.OFFICIAL_TEST)
    write_split(split_df, schema.SPLIT)
    sizes = ", ".join(f"{s} {c['total']}" for s, c in counts.items())
    print(f"split: {sizes}; leakage check passed; written: {schema.SPLIT}, {schema.SPLIT_METRICS}, "
          f"{schema.SPLIT_REPORT}")
    official = stats.get("official", {})
    if official.get("mode", "none") != "none":
        print(f"  official splits ({official['mode']}): " + json.dumps({k: v for k, v in official.items()
                                                                        if k != "mode"}, sort_keys=True))
    if len(official_test):
        print(f"  official test set, copies within it included: {len(official_test)} images ({schema.OFFICIAL_TEST})")


if __name__ == "__main__":
    run_stage("split", main)
