"""DVC stage `dedupe`: group every copy of one X-ray across all sources -> data/interim/groups.csv + report."""

import pandas as pd

from lungxray.core import schema
from lungxray.core.config import FetchParams, load_sections
from lungxray.core.io import write_csv, write_json
from lungxray.core.stage import run_stage
from lungxray.data.dedupe import DedupeParams, contact_sheet, find_groups, summary_text


def main() -> None:
    params = load_sections({"dedupe": DedupeParams, "fetch": FetchParams})
    manifest = pd.read_csv(schema.MANIFEST, keep_default_na=False)
    groups, report = find_groups(manifest, params.dedupe, cache_path=str(schema.DEDUPE_CACHE),
                                 max_pixels=params.fetch.max_pixels)
    contact_sheet(groups, report, str(schema.DEDUPE_SHEET))
    write_json(schema.DEDUPE_REPORT, report)
    write_json(schema.DEDUPE_METRICS, {k: report[k] for k in ("images_in", "groups", "duplicate_groups",
                                                              "duplicates_removed", "n_label_conflicts")})
    write_csv(schema.GROUPS, groups)  # last: its presence means the stage finished
    print(summary_text(report))
    print(f"written: {schema.GROUPS}, {schema.DEDUPE_REPORT}, {schema.DEDUPE_SHEET}")


if __name__ == "__main__":
    run_stage("dedupe", main)
