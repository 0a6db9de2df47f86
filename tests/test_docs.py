"""The documentation cannot rot: links resolve, snippets run, the API reference builds cleanly."""

import doctest
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

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


# Snippets. Every ```python block of a page runs on its own: in a fresh namespace
# (a block needs no name from an earlier block: it has its own imports and data)
# and a fresh empty working directory. The blocks of one page share one interpreter
# (one subprocess per page, which keeps the test fast; a block must still not rely
# on what an earlier one set up in the process, e.g. XLA_FLAGS). A block opts out with
# "norun" in its info string (```python norun).
#
# Expected output: the ```text block that follows a ```python block, with nothing
# but blank lines between them, is what the block prints to stdout. It is compared
# with doctest's OutputChecker with ELLIPSIS and NORMALIZE_WHITESPACE, so a value that
# legitimately varies (a loss, a timing, a path) is written as `...` and runs of
# whitespace compare equal. Every runnable block must have one; stderr (logging,
# progress bars, warnings) is not compared.
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```[ \t]*\n", re.S | re.M)
_OUTPUT = re.compile(r"\s*^```text[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
_CHECK_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _python_blocks(path: str) -> list[dict]:
    """The runnable ```python blocks of a page, each with its first line and expected output.

    Returns dicts with ``code`` (dedented), ``line`` (1-based line of the code's first
    line in the file) and ``want`` (the following ```text block, or None).
    """
    text = open(path, encoding="utf-8").read()
    blocks = []
    for m in _BLOCK.finditer(text):
        if "norun" in m.group(1):
            continue
        out = _OUTPUT.match(text, m.end())
        blocks.append({"code": textwrap.dedent(m.group(2)),
                       "line": text.count("\n", 0, m.start(2)) + 1,
                       "want": textwrap.dedent(out.group(1)) if out else None})
    return blocks


def check_output(want: str, got: str) -> str | None:
    """None when ``got`` matches ``want`` (doctest rules above), else the difference."""
    checker = doctest.OutputChecker()
    if checker.check_output(want, got, _CHECK_FLAGS):
        return None
    return checker.output_difference(doctest.Example("", want), got, _CHECK_FLAGS)


# Runs in the page's subprocess: argv[1] is a JSON file of blocks, argv[2] the
# results file. Each block is exec'd in a fresh globals dict and its own empty
# directory, with stdout captured.
_RUNNER = """
import contextlib, io, json, os, sys, time, traceback
from jaxcnn.compilation_cache import enable_compilation_cache

# The test session's compilation cache (see conftest.py): pages that train the same
# model share its compiled steps instead of compiling them once per page.
enable_compilation_cache(os.environ.get("JAXCNN_COMPILATION_CACHE"))
blocks, results, top = json.load(open(sys.argv[1])), [], os.getcwd()
for i, block in enumerate(blocks):
    os.makedirs(os.path.join(top, f"block{i}"))
    os.chdir(os.path.join(top, f"block{i}"))
    out, error, t0 = io.StringIO(), None, time.perf_counter()
    try:
        code = compile("\\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:
        error = traceback.format_exc()
    finally:
        os.chdir(top)
    results.append({"out": out.getvalue(), "error": error,
                    "seconds": round(time.perf_counter() - t0, 2)})
    with open(sys.argv[2], "w") as f:  # after every block: a crash keeps the earlier ones
        json.dump(results, f)
"""

# Every page with Python snippets runs them in a fresh interpreter, in an empty directory.
SNIPPET_PAGES = sorted(os.path.relpath(p, DOCS) for p in _markdown_files()
                       if p.startswith(DOCS + os.sep) and _python_blocks(p))


def _run_page(page: str, workdir: str, on_start=None) -> dict:
    """Runs a page's blocks in a fresh interpreter; ``on_start(page, popen)`` sees the process."""
    path = os.path.join(DOCS, page)
    blocks = [dict(b, path=path) for b in _python_blocks(path)]
    with open(os.path.join(workdir, "blocks.json"), "w") as f:
        json.dump(blocks, f)
    with open(os.path.join(workdir, "runner.py"), "w") as f:
        f.write(_RUNNER)
    results_file = os.path.join(workdir, "results.json")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    t0 = time.perf_counter()
    args = [sys.executable, "runner.py", "blocks.json", results_file]
    # subprocess.run(..., capture_output=True, text=True, timeout=900), with the process
    # handed to on_start so that a page nobody waits for can be stopped.
    with subprocess.Popen(args, cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as popen:
        if on_start is not None:
            on_start(page, popen)
        try:
            stdout, stderr = popen.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.communicate()
            raise
    proc = subprocess.CompletedProcess(args, popen.returncode, stdout, stderr)
    results = json.load(open(results_file)) if os.path.exists(results_file) else []
    return {"blocks": blocks, "results": results, "proc": proc,
            "seconds": time.perf_counter() - t0}


class _PageRuns:
    """The pages' runs, each started when its test first asks for it.

    A page starts together with the pages whose tests come next (``ahead`` in
    all), so that a few run side by side: most of a page's time is
    single-threaded (imports, compilation, Python dispatch). Pages are only
    started for tests this process runs: under pytest-xdist the page tests may
    be split between workers, and ``-k`` may pick one page; a page started
    ahead whose test never comes is stopped at the end.
    """

    def __init__(self, tmp_path_factory, ahead: int):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=ahead)
        self._ahead, self._tmp = ahead, tmp_path_factory
        self._futures, self._asked, self._procs = {}, set(), {}
        self._lock, self._closed = threading.Lock(), False

    def __getitem__(self, page: str):
        i = SNIPPET_PAGES.index(page)
        for p in SNIPPET_PAGES[i:i + self._ahead]:  # the tests run in this order
            if p not in self._futures:
                self._futures[p] = self._pool.submit(
                    _run_page, p, str(self._tmp.mktemp("snippets")), self._started)
        self._asked.add(page)
        return self._futures[page]

    def _started(self, page: str, popen: subprocess.Popen) -> None:
        with self._lock:
            self._procs[page] = popen
            if self._closed and page not in self._asked:
                popen.kill()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for page, popen in self._procs.items():
                if page not in self._asked:
                    popen.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def snippet_runs(tmp_path_factory):
    """The pages' snippet runs (``runs[page].result()``), a few side by side; see _PageRuns."""
    runs = _PageRuns(tmp_path_factory, ahead=max(2, min(4, os.cpu_count() or 2)))
    yield runs
    runs.close()


@pytest.mark.parametrize("page", SNIPPET_PAGES)
def test_python_snippets_in_docs_run_and_print_what_they_say(page, snippet_runs):
    run = snippet_runs[page].result()
    problems = []
    for i, block in enumerate(run["blocks"]):
        where = f"docs/{page}, the ```python block at line {block['line'] - 1}"
        if i >= len(run["results"]):
            problems.append(f"{where} did not run: the page's process died:\n"
                            f"{run['proc'].stderr[-3000:]}")
            break
        result = run["results"][i]
        if result["error"]:
            problems.append(f"{where} failed:\n{result['error'][-3000:]}")
        elif block["want"] is None:
            problems.append(f"{where} has no ```text block after it with the output it "
                            f"prints; it printed:\n{result['out']}")
        else:
            diff = check_output(block["want"], result["out"])
            if diff:
                problems.append(f"{where} printed something else:\n{diff}")
    assert not problems, "\n\n".join(problems)


def test_output_comparison_follows_doctest_rules():
    assert check_output("loss 0.2... after 3 epochs\n", "loss 0.2713 after 3 epochs\n") is None
    assert check_output("a   b\n[1, 2,\n 3]\n", "a b\n[1, 2, 3]\n") is None
    assert check_output("accuracy 0.9...\n", "accuracy 0.8123\n") is not None
    blocks = _python_blocks(os.path.join(DOCS, "concepts.md"))
    assert blocks and all(b["want"] is not None for b in blocks)


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

# Without the "View Source" blocks: syntax-highlighting every function's source was about
# a quarter of the build's time, and it warns about nothing (pdoc's warnings come from the
# docstrings, annotations and links, which are all still rendered; the warnings are the
# same either way).
_BUILD = """
import json, pathlib, pkgutil, sys, warnings
import pdoc, pdoc.render
import jaxcnn

pdoc.render.configure(show_source=False)

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
