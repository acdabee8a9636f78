"""DVC stage `fetch`: materialise every source, map labels, probe images -> data/interim/manifest.csv."""

from lungxray.core.config import FetchParams, load_section
from lungxray.core.stage import run_stage
from lungxray.data.fetch import run_fetch, summary_text


def main() -> None:
    print(summary_text(run_fetch(load_section("fetch", FetchParams))))


if __name__ == "__main__":
    run_stage("fetch", main)
