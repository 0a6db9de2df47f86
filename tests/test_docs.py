"""The documentation cannot rot: links resolve, snippets run, the API reference builds cleanly."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def _markdown_files():
    files = [os.path.join(ROOT, "README.md")]
    for dirpath, _, names in os.walk(DOCS):
        files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".md")]
    return files


_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    text = _FENCE.sub("", open(path, encoding="utf-8").read())
    slugs, seen = set(), {}
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M):
        s = _slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        slugs.add(s if n == 0 else f"{s}-{n}")
    return slugs


def _relative_links(path: str):
    text = _FENCE.sub("", open(path, encoding="utf-8").read())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...
        yield target


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_to_existing_files_and_headings(path):
    problems = []
    for target in _relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else os.path.normpath(
            os.path.join(os.path.dirname(path), file_part))
        if not os.path.exists(dest):
            problems.append(f"{target}: no such file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.endswith(".md") and anchor not in _anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not problems, f"broken links in {os.path.relpath(path, ROOT)}:\n" + "\n".join(problems)


def test_every_doc_is_reachable_from_the_index():
    index = os.path.join(DOCS, "index.md")
    linked = {os.path.normpath(os.path.join(DOCS, t.partition("#")[0]))
              for t in _relative_links(index) if t.partition("#")[0]}
    pages = {p for p in _markdown_files()
             if os.path.dirname(p) == DOCS and not p.endswith("index.md")}
    assert pages <= linked, f"not linked from docs/index.md: {sorted(pages - linked)}"


def _python_blocks(path: str) -> list[str]:
    """The ```python blocks of a page (an info string with "norun" opts a block out)."""
    text = open(path, encoding="utf-8").read()
    return [textwrap.dedent(m.group(2)) for m in
            re.finditer(r"^```python([^\n]*)\n(.*?)^```", text, re.S | re.M)
            if "norun" not in m.group(1)]


# Every page with Python snippets runs them in a fresh interpreter (its blocks
# in order, like a notebook), in an empty directory.
SNIPPET_PAGES = sorted(os.path.relpath(p, DOCS) for p in _markdown_files()
                       if p.startswith(DOCS + os.sep) and _python_blocks(p))


def _run_page(page: str, workdir: str) -> subprocess.CompletedProcess:
    blocks = _python_blocks(os.path.join(DOCS, page))
    script = os.path.join(workdir, "snippets.py")
    # The test session's compilation cache (see conftest.py): pages that train the same
    # model share its compiled steps instead of compiling them once per page.
    preamble = ("from jaxcnn.compilation_cache import enable_compilation_cache\n"
                "enable_compilation_cache(__import__('os').environ.get('JAXCNN_COMPILATION_CACHE'))\n")
    with open(script, "w") as f:
        f.write(preamble + "\n\n".join(blocks))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, script], cwd=workdir, env=env,
                           capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def snippet_runs(tmp_path_factory):
    """Starts every page's snippets at once (a few at a time), so they overlap.

    Most of a page's time is single-threaded (imports, compilation, Python
    dispatch), so running pages side by side shortens the test on any machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)))
    futures = {page: pool.submit(_run_page, page, str(tmp_path_factory.mktemp("snippets")))
               for page in SNIPPET_PAGES}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("page", SNIPPET_PAGES)
def test_python_snippets_in_docs_run(page, snippet_runs):
    out = snippet_runs[page].result()
    assert out.returncode == 0, f"a snippet in docs/{page} failed:\n{out.stderr[-3000:]}"


def test_readme_links_every_doc():
    readme = os.path.join(ROOT, "README.md")
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0]))
              for t in _relative_links(readme)}
    assert os.path.join(DOCS, "index.md") in linked
    pages = {p for p in _markdown_files() if os.path.dirname(p) == DOCS}
    assert pages <= linked, f"not linked from README.md: {sorted(pages - linked)}"


# pdoc cannot evaluate some annotations that come from flax and jax objects
# (flax's TrainState.opt_state, the signature of jax's initialisers that are
# the default values of kernel_init/bias_init). They are not jaxcnn's
# docstrings; every other warning fails the build.
_THIRD_PARTY = re.compile(
    r"Error parsing type annotation .* for \S*(TrainState|_init)\S*\. Import of "
    r"(ArrayTree|Array|core|DTypeLikeInexact|OutShardingType) failed")

_BUILD = """
import json, pathlib, pkgutil, sys, warnings
import pdoc
import jaxcnn

# jaxcnn's __all__ hides its submodules from pdoc's walk, so name them; pdoc walks
# subpackages itself.
modules = ["jaxcnn"] + sorted(m.name for m in pkgutil.iter_modules(jaxcnn.__path__, "jaxcnn.")
                              if not m.name.endswith("__main__"))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pdoc.pdoc(*modules, output_directory=pathlib.Path(sys.argv[1]))
print(json.dumps({"modules": modules, "warnings": [str(w.message) for w in caught]}))
"""


def test_api_reference_builds_without_warnings(tmp_path):
    pytest.importorskip("pdoc", reason="pdoc is in the test extra: pip install -e '.[test]'")
    out = subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    warnings = sorted({w for w in result["warnings"] if not _THIRD_PARTY.search(w)})
    assert not warnings, "pdoc warnings:\n" + "\n".join(warnings)
    for module in result["modules"]:  # every top-level module has its page
        page = tmp_path / (module.replace(".", "/") + ".html")
        assert page.exists(), f"no API page for {module}"
    assert "One optimisation step" in (tmp_path / "jaxcnn" / "training.html").read_text()
