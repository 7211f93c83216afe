"""The manual cannot rot: every public name has a docstring and a place in the API reference, the README stays
short and names neither a machine's paths nor our tracker, and the site builds in strict mode (in ``.ci/run``)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ["lightning_ae", "lightning_ae.nets", "lightning_ae.quantizers", "lightning_ae.callbacks",
            "lightning_ae.data"]
API = "\n".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _public(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(package)
    return [(name, getattr(module, name)) for name in module.__all__ if not name.startswith("_")]


def _documented_where(name: str, obj: object) -> bool:
    """``::: lightning_ae.<name>`` or the whole package or module it comes from is in the API pages."""
    module = getattr(obj, "__module__", "") or ""
    targets = {f"lightning_ae.{name}"} | {p for p in PACKAGES[1:] if module.startswith(p)}
    targets |= {module, f"{module}.{name}"}
    return any(re.search(rf"^::: {re.escape(t)}\s*$", API, re.M) for t in targets)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_has_a_docstring_and_an_api_entry(package: str) -> None:
    missing_doc, missing_api = [], []
    for name, obj in _public(package):
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not (obj.__doc__ or "").strip():
                missing_doc.append(name)
            if not _documented_where(name, obj):
                missing_api.append(name)
    assert not missing_doc, f"{package}: no docstring: {missing_doc}"
    assert not missing_api, f"{package}: not in docs/api: {missing_api}"


def test_the_readme_is_short_and_links_the_manual() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "mkdocs serve" in text and "docs/models/generate.md" in text


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_no_machine_paths_or_tracker_references(page: Path) -> None:
    text = page.read_text()
    for pattern in (r"\bissues? \d+", r"/tmp/", r"/work/", r"\.\./shared", r"/home/", r"\bthe lead\b"):
        assert not re.search(pattern, text, re.I), f"{page.name}: {pattern}"


RESULTS = sorted(p for p in (ROOT / "benchmarks" / "results").rglob("*.*")
                 if p.suffix in (".json", ".log", ".txt", ".csv", ".md"))


@pytest.mark.parametrize("result", RESULTS, ids=[p.name for p in RESULTS])
def test_benchmark_results_name_no_machine_paths_or_tracker(result: Path) -> None:
    """The docs quote these files: no folder of the machine that ran them, no tracker reference."""
    text = result.read_text()
    for pattern in (r"\bissues? ?\d+", r"/tmp/", r"/work/", r"/root/", r"\.\./shared", r"/home/"):
        assert not re.search(pattern, text, re.I), f"{result.name}: {pattern}"


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = set(re.findall(r":\s*([\w/-]+\.md)\s*$", config, re.M))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert nav == pages
