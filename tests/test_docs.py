"""The README and docs/: the README's first screen holds the two commands and the stage table, every relative link
leads somewhere, and the generated tables sit between their markers in docs/ (where the report scripts write them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
MARKERS = {"seed-results": REPO / "docs" / "seeds.md", "pneumoniamnist-results": REPO / "docs" / "benchmarks.md"}


def prose(path: Path) -> str:
    """The Markdown of ``path`` without its fenced code blocks (a `# comment` in a shell block is no heading)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", prose(path), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_readme_links_every_page_of_docs():
    linked = {(REPO / t.partition("#")[0]).resolve() for t in relative_links(README)}
    assert not [p.name for p in DOCS if p.resolve() not in linked]


def test_the_readmes_first_screen_holds_the_two_commands_the_makefile_defines():
    first = README.read_text(encoding="utf-8").splitlines()[:60]
    for command in ("make run", "make test"):
        assert any(line.startswith(command + " ") for line in first), f"'{command}' is not in the README's first lines"
    targets = re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.M)
    assert {"run", "test"} <= set(targets)


def test_the_readmes_stage_table_names_the_script_of_every_stage_in_dvc_yaml():
    text = README.read_text(encoding="utf-8")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = [name for name in stages if f"| `stages/{name}.py` |" not in text]
    assert not missing, f"README.md's stage table lacks a row for {missing}"
    assert all((REPO / "stages" / f"{name}.py").exists() for name in stages)


@pytest.mark.parametrize("name", sorted(MARKERS))
def test_each_generated_table_sits_between_its_markers_once_in_docs_and_nowhere_else(name):
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = MARKERS[name].read_text(encoding="utf-8")
    assert text.count(start) == 1 and text.count(end) == 1 and text.index(start) < text.index(end)
    elsewhere = [p.name for p in [README, *DOCS] if p != MARKERS[name] and start in p.read_text(encoding="utf-8")]
    assert not elsewhere


def test_the_seed_report_rewrites_only_the_table_between_the_markers_of_docs_seeds_md(tmp_path):
    doc = tmp_path / "seeds.md"
    shutil.copy(MARKERS["seed-results"], doc)
    before = doc.read_text()
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "seeds" / "report.py"), "--results",
                          str(tmp_path / "none"), "--update-docs", "--doc", str(doc)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    after = doc.read_text()
    start, end = "<!-- seed-results:start -->", "<!-- seed-results:end -->"
    assert after.split(start)[0] == before.split(start)[0] and after.split(end)[1] == before.split(end)[1]
    assert after.split(start)[1].split(end)[0].strip() == out.stdout.strip()


def _resolves(dotted: str) -> bool:
    """``lungxray.a.b[.name]``: a package or module under src/, optionally followed by one name it defines."""
    parts, base = dotted.split(".")[1:], REPO / "src" / "lungxray"
    for i, part in enumerate(parts):
        if (base / part).is_dir():
            base = base / part
        elif (base / f"{part}.py").is_file():
            base = base / f"{part}.py"
        else:
            rest = parts[i:]
            source = (base / "__init__.py" if base.is_dir() else base).read_text(encoding="utf-8")
            return len(rest) == 1 and re.search(rf"^(def|class) {rest[0]}\b|^{rest[0]}\b.*=", source, re.M) is not None
    return True


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_module_and_source_path_the_docs_name_exists(page):
    text = page.read_text(encoding="utf-8")
    paths = [p for p in re.findall(r"`(src/lungxray/[^`\s]*)`", text) if not (REPO / p).exists()]
    names = [n for n in re.findall(r"`(lungxray\.[A-Za-z_][\w.]*)`", text) if not _resolves(n)]
    assert not paths + names, f"{page.relative_to(REPO)} names what the code no longer has: {paths + names}"
