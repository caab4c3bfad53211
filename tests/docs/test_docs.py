"""The documentation's examples run and give what they show: the doctests of the docstrings and the type stubs,
every ```python block of README.md and docs/*.md, and the docs site's strict build (mkdocs)."""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import latte_rs

STUBS = Path(latte_rs.__file__).with_name("_native.pyi")
ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_stub_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    globs = {**{k: getattr(latte_rs, k) for k in dir(latte_rs)}, "np": np, "latte_rs": latte_rs}
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tree = ast.parse(STUBS.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node):
            name = getattr(node, "name", "_native")
            runner.run(parser.get_doctest(ast.get_docstring(node), dict(globs), name, str(STUBS), 0))
    assert runner.failures == 0 and runner.tries >= 4


@pytest.mark.parametrize("module", ["latte_rs", "latte_rs.data.synthetic", "latte_rs.training",
                                    "latte_rs.evaluation.metrics", "latte_rs.evaluation",
                                    "latte_rs.evaluation.protocol", "latte_rs.pipelines", "latte_rs.video_io",
                                    "latte_rs.torch", "latte_rs.hub", "latte_rs.cache", "latte_rs.ablation",
                                    "latte_rs.evaluation.prompt_following"])
def test_module_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# The pages' Python blocks. A block runs as a reader would run it: the blocks of one page one after another, in one
# namespace and one (temporary) working directory. A comment on the line right above a block says what of it does
# not run, and why (it does not show on GitHub or on the site):
#   <!-- docs-test: skip: WHY -->                  the block needs files only a user has (it is still compiled)
#   <!-- docs-test: run until 'TEXT': WHY -->      the lines from the first one containing TEXT on do not run
MARKER = re.compile(r"<!--\s*docs-test:\s*(?:(?P<skip>skip)|run until '(?P<until>[^']+)')\s*:\s*(?P<why>\S.*?)\s*-->")


@dataclass(frozen=True)
class Example:
    page: Path
    line: int  # the block's first line of code, 1-based
    source: str  # the whole block
    run: str  # what of it runs
    skip: str | None  # why none of it runs

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_examples(page: Path) -> tuple[list[Example], list[str]]:
    """The page's ```python blocks, and what is wrong with its docs-test comments."""
    lines = page.read_text().splitlines()
    examples, problems = [], []
    for i, line in enumerate(lines):
        if "docs-test" in line and line.lstrip().startswith("<!--"):
            nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not MARKER.fullmatch(line.strip()):
                problems.append(f"{page.name}:{i + 1}: not a docs-test comment this test reads: {line.strip()}")
            elif nxt != "```python":
                problems.append(f"{page.name}:{i + 1}: a docs-test comment must sit right above a ```python block")
        if line.strip() != "```python":
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            problems.append(f"{page.name}:{i + 1}: the block never closes")
            continue
        code = lines[i + 1:end]
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i > 0 else None
        run, skip = code, None
        if marker and marker["skip"]:
            run, skip = [], marker["why"]
        elif marker:
            stop = next((k for k, c in enumerate(code) if marker["until"] in c), None)
            if stop is None:
                problems.append(f"{page.name}:{i}: 'run until' names text the block does not have")
            run = code[:stop]
        examples.append(Example(page, i + 2, "\n".join(code) + "\n", "\n".join(run) + "\n", skip))
    return examples, problems


EXAMPLES = [example for page in PAGES for example in read_examples(page)[0]]


def test_docs_test_comments_are_read():
    """A misspelt or misplaced comment would otherwise run a block that needs a user's files, or skip one silently."""
    problems = [problem for page in PAGES for problem in read_examples(page)[1]]
    assert not problems, "\n".join(problems)
    assert sum(example.skip is None for example in EXAMPLES) >= 7  # the examples that need nothing but latte-rs


class PageSession:
    """One page's namespace and working directory, and how many of its examples have run in them."""

    def __init__(self, directory: Path):
        self.directory, self.namespace, self.done = directory, {"__name__": "__docs__"}, 0


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    made: dict[Path, PageSession] = {}

    def session(page: Path) -> PageSession:
        if page not in made:
            made[page] = PageSession(tmp_path_factory.mktemp(page.stem))
        return made[page]

    return session


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.name)
def test_example_runs(example, sessions, monkeypatch):
    compile(example.source, example.name, "exec")  # every block parses, the skipped ones too
    if example.skip:
        pytest.skip(f"{example.name}: {example.skip}")
    page_examples = [e for e in EXAMPLES if e.page == example.page and e.skip is None]
    session = sessions(example.page)
    monkeypatch.chdir(session.directory)
    # This one, after those before it on the page that have not run (a selection with -k leaves them out).
    for earlier in page_examples[session.done:page_examples.index(example) + 1]:
        session.done += 1
        # Blank lines in front keep the page's line numbers in a traceback.
        exec(compile("\n" * (earlier.line - 1) + earlier.run, str(earlier.page), "exec"), session.namespace)


def test_readme_links_resolve():
    """README.md is not part of the site, so mkdocs does not check its links into docs/."""
    slug = re.compile(r"[^\w\s-]")
    broken = []
    for target in re.findall(r"\]\((?!https?://)([^)\s]+)\)", (ROOT / "README.md").read_text()):
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.MULTILINE)
            if anchor not in {re.sub(r"\s+", "-", slug.sub("", h).strip().lower()) for h in headings}:
                broken.append(target)
    assert not broken


def test_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: no broken link, no unresolved API reference, no warning; the API reference has
    the native classes (read from the stubs) and the pure-Python ones."""
    needed = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings[python]",
              "mkdocstrings_handlers": "mkdocstrings[python]"}
    missing = sorted({package for module, package in needed.items() if importlib.util.find_spec(module) is None})
    if missing:
        pytest.skip(f"the docs site needs {', '.join(missing)} (pip install \".[docs]\")")
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    api = (site / "api" / "index.html").read_text()
    for name in ["latte_rs.LatteModel.forward_with_cfg", "latte_rs.Trainer.step", "latte_rs.LattePipeline",
                 "latte_rs.data.UCF101", "latte_rs.torch.LatteModule"]:
        assert f'id="{name}"' in api, name
