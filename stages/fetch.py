"""DVC stage `fetch`: materialise every source, map labels, probe images -> data/interim/manifest.csv."""

from lungxray.config import FetchParams, load_section
from lungxray.fetch import run_fetch, summary_text
from lungxray.stage import run_stage


def main() -> None:
    print(summary_text(run_fetch(load_section("fetch", FetchParams))))


if __name__ == "__main__":
    run_stage("fetch", main)
