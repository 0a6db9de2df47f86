"""One source for every number: the docs quote what a results file holds.

The rule (also in docs/index.md, "Numbers in the docs"):

* Quoted results. In README.md and docs/*.md (the tables generated into
  docs/experiments/*.md are sources, not checked), outside code blocks,
  inline code and headings, every number followed by a unit is a quoted
  result: ``%``, ``s``, ``ms``, ``images/s``, ``MiB``, ``GiB``, and ``x``
  right after the number (a ratio: ``1.7x``, not ``3x3``, ``28x28x1`` or
  ``4 x 32``). Each number of a range or spread takes the unit after it
  (``1.3-1.7x``, ``98.4 ± 1.1 %``, ``97.4 to 98.1 %``, ``9.0 -> 4.3 ms``), a
  sign is part of the number (``-3.6%``), and a paragraph is read as a whole
  (the unit may be on the next line). In a table, every number of a cell is a
  quoted result when the column's header names one of the units
  (``test accuracy %``, ``images/s``, ``compile s``). Thousands separators are
  allowed (``1,437``).
* Sources. The sources of a number are the results files (``.md``, ``.json``,
  ``.jsonl`` or ``.csv`` under docs/experiments/ or docs/benchmarks/) linked
  from its section: the text under its heading down to the next heading of the
  same or a higher level (so a section's links include its subsections'; the
  page's title, a level-1 heading, covers only the text before the next heading).
* Passing. A number passes if, in one of its sources, its digits appear as a
  number in the text (``99.47`` in a ``.md`` table; thousands separators
  ignored), or a numeric value of a JSON, JSON-lines or CSV source, rounded to
  the quoted number of decimals, equals it: as is, or converted from the
  file's unit to the quoted one (a fraction quoted as a percentage: times 100;
  seconds as ms: times 1000; bytes as MiB or GiB). A JSON-lines file of
  ``jaxcnn bench`` rows also holds what ``jaxcnn bench --plot FILE`` prints
  from it: its rounds merged by ``jaxcnn.bench.aggregate`` (medians over
  rounds, ``vs jaxcnn`` ratios) and the table ``jaxcnn.bench.format_table``
  writes. Nothing else is derived: a sum, ratio, range or difference worked
  out in the prose is not a source's number; have the script write it into its
  results file, or quote what the file holds.
* Opting out, for a number that is not a measured result (a target, a config
  value, the threshold of a rule, a figure published by another project): an
  HTML comment ``<!-- not measured: REASON -->`` (invisible in the rendered
  page) exempts the quoted numbers before it, back to the start of its line
  (in a table: of its cell) or to the previous comment. Every opt-out needs
  its reason.

The check is as strong as the quoted precision: ``99.47 %`` must be in the
file, while a small whole number (``2x``, ``10 %``) matches many values and
passes easily. It catches misquotes and numbers with no file behind them, not
every wrong rounding of a small number.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import re
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_DIRS = ("docs/experiments", "docs/benchmarks")
RESULT_EXTENSIONS = (".md", ".json", ".jsonl", ".csv")

# A number: 1,437 or 98.4 or 12; not part of a word, a version (0.10.2) or a longer number.
NUM = r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d]|[.,]\d)"
_NUM = re.compile(NUM)
# With its sign, where it has one: "(-3.6%, +12.8%)", but not the dash of "1-7 s".
SIGNED = rf"(?:(?<![\w.,)\]])[-+−](?=\d))?{NUM}"
_SIGNED = re.compile(SIGNED)
# Between the numbers of a range or a spread.
_JOIN = r"\s*(?:->|→|-|–|±|to)\s*"
# A unit right after a number. A ratio's x touches the number and is not followed by a
# letter or digit (1.7x, not 3x3, 28x28x1 or 4 x 32).
_UNIT = r"(?:\s?(?:%|images/s\b|ms\b|s\b|MiB\b|GiB\b)|x(?![\w]))"
_QUOTE = re.compile(rf"({SIGNED}(?:{_JOIN}{SIGNED})*)({_UNIT})")
# A value in a file's own unit quoted in another: a fraction as a percentage, seconds as
# milliseconds, bytes as MiB or GiB.
SCALES = {"%": (1, 100), "ms": (1, 1000), "MiB": (1, 2.0 ** -20), "GiB": (1, 2.0 ** -30)}
_HEADER_UNIT = re.compile(r"%|images/s|(?<![\w/])(?:ms|s|MiB|GiB)\b")
_OPT_OUT = re.compile(r"<!--\s*not measured:\s*(.*?)\s*-->")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE = re.compile(r"`[^`]*`")


@dataclass(frozen=True)
class Quote:
    line: int    # 1-based
    number: str  # as written, e.g. "1,437"
    unit: str
    text: str    # the group it came from, e.g. "98.4 ± 1.1 %"


# --- finding the quoted numbers and their sources in a page -------------------------------

def _plain(text: str) -> str:
    """Text without HTML comments, inline code, link targets and emphasis markers (newlines kept)."""
    text = re.sub(r"<!--.*?-->", lambda m: " " + "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = _CODE.sub(lambda m: " " + "\n" * m.group(0).count("\n"), text)
    text = _LINK.sub(lambda m: m.group(1), text)
    return text.replace("*", "")


def _quotes_in(segment: str, line: int, unit: str | None) -> list[Quote]:
    """Quoted numbers of a piece of text starting on ``line``; with ``unit`` (a table header's),
    every number in it."""
    text = _plain(segment)
    found, covered = [], []
    for m in _QUOTE.finditer(text):
        u = m.group(2).strip()
        found += [Quote(line + text.count("\n", 0, m.start(1) + n.start()), n.group(0), u,
                        " ".join(m.group(0).split()))
                  for n in _SIGNED.finditer(m.group(1))]
        covered.append(m.span(1))
    if unit:
        for n in _SIGNED.finditer(text):
            if not any(a <= n.start() < b for a, b in covered):
                found.append(Quote(line + text.count("\n", 0, n.start()), n.group(0), unit,
                                   n.group(0)))
    return found


def _quotes_with_opt_outs(segment: str, line: int, unit: str | None) -> tuple[list[Quote], int]:
    """The quoted numbers of a paragraph or table cell that no opt-out comment covers, and how
    many the comments cover (each the numbers before it, back to the start of its line or the
    previous comment)."""
    quotes, opted, start = [], 0, 0
    for m in _OPT_OUT.finditer(segment):
        where = line + segment.count("\n", 0, m.start())
        assert m.group(1), f"line {where}: an opt-out needs its reason: <!-- not measured: REASON -->"
        line_start = max(start, segment.rfind("\n", 0, m.start()) + 1)
        quotes += _quotes_in(segment[start:line_start], line + segment.count("\n", 0, start), unit)
        opted += len(_quotes_in(segment[line_start:m.start()], where, unit))
        start = m.end()
    quotes += _quotes_in(segment[start:], line + segment.count("\n", 0, start), unit)
    return quotes, opted


def _split_row(row: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", row.strip())
    return cells[1:-1] if row.strip().endswith("|") else cells[1:]


@dataclass
class Page:
    quotes: list[tuple[Quote, tuple[str, ...], str]]  # quote, its sources, its section's heading
    opted_out: int


def parse_page(path: str, text: str | None = None) -> Page:
    """Every quoted number of a page with the results files linked from its section."""
    if text is None:
        text = open(path, encoding="utf-8").read()
    lines = text.splitlines()
    in_code, headings, code_lines = False, [], set()
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_code = not in_code
            code_lines.add(i)
            continue
        if in_code:
            code_lines.add(i)
            continue
        m = _HEADING.match(line)
        if m:
            headings.append((i, len(m.group(1)), m.group(2)))

    def section_of(i: int) -> tuple[int, int, str]:
        start, level, title = 0, 0, "(top of the page)"
        for h, lev, t in headings:
            if h <= i:
                start, level, title = h, lev, t
        # A page's title (level 1) covers only the text before the next heading.
        end = next((h for h, lev, _ in headings
                    if h > start and (lev <= level or level == 1)), len(lines))
        return start, end, title

    @functools.lru_cache(maxsize=None)
    def sources(start: int, end: int) -> tuple[str, ...]:
        body = "\n".join("" if i in code_lines else lines[i] for i in range(start, end))
        found = []
        for _, target in _LINK.findall(_CODE.sub(" ", body)):
            target = target.partition("#")[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            full = os.path.normpath(os.path.join(os.path.dirname(path), target))
            rel = os.path.relpath(full, ROOT).replace(os.sep, "/")
            if (rel.startswith(tuple(d + "/" for d in RESULT_DIRS))
                    and rel.endswith(RESULT_EXTENSIONS) and os.path.isfile(full)
                    and full not in found):
                found.append(full)
        return tuple(found)

    # Pieces of text, each checked as a whole: a paragraph (so a unit on the next line
    # still counts) or a table cell (with its column's unit).
    pieces: list[tuple[int, str, str | None]] = []  # first line (0-based), text, header unit
    paragraph: list[int] = []
    table_units = None

    def end_paragraph():
        if paragraph:
            pieces.append((paragraph[0], "\n".join(lines[k] for k in paragraph), None))
            paragraph.clear()

    for i, line in enumerate(lines):
        is_row = line.lstrip().startswith("|") and i not in code_lines
        if i in code_lines or _HEADING.match(line) or not line.strip() or is_row:
            end_paragraph()
        if not is_row:
            table_units = None
            if i not in code_lines and not _HEADING.match(line) and line.strip():
                paragraph.append(i)
            continue
        if table_units is None:  # a table's header row
            table_units = [(_HEADER_UNIT.search(_plain(c)) or [None])[0] for c in _split_row(line)]
        elif not re.fullmatch(r"\s*\|[\s:|-]+\|?\s*", line):  # not the delimiter row
            units = table_units
            pieces += [(i, c, units[k] if k < len(units) else None)
                       for k, c in enumerate(_split_row(line))]
    end_paragraph()

    quotes, opted = [], 0
    for first, piece, unit in pieces:
        start, end, title = section_of(first)
        found, n = _quotes_with_opt_outs(piece, first + 1, unit)
        opted += n
        quotes += [(q, sources(start, end), title) for q in found]
    return Page(quotes, opted)


# --- what a results file holds -----------------------------------------------------------

@dataclass(frozen=True)
class Source:
    numbers: frozenset  # numbers written in its text without thousands separators: "-3.6", "|3.6"
    values: tuple       # its numeric values (JSON, JSON lines, CSV)


def _text_numbers(text: str) -> set[str]:
    """The numbers written in a text, thousands separators removed: each with its sign (none
    for a positive one), and its magnitude after a "|"."""
    out = set()
    for m in _SIGNED.finditer(text):
        n = m.group(0).replace(",", "").replace("−", "-").lstrip("+")
        out |= {n, "|" + n.lstrip("-")}
    return out


def _walk(obj, numbers: set, values: list) -> None:
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        values.append(float(obj))
    elif isinstance(obj, str):
        numbers |= _text_numbers(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            numbers |= _text_numbers(str(k))
            _walk(v, numbers, values)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, numbers, values)


def _is_bench_rows(rows) -> bool:
    return bool(rows) and all(isinstance(r, dict) and "framework" in r
                              and "step_seconds_median" in r for r in rows)


@functools.lru_cache(maxsize=None)
def load_source(path: str) -> Source:
    """The numbers and values of one results file (parsed once per test session)."""
    text = open(path, encoding="utf-8").read()
    numbers: set[str] = set()
    values: list[float] = []
    if path.endswith(".json"):
        _walk(json.loads(text), numbers, values)
    elif path.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        _walk(rows, numbers, values)
        if _is_bench_rows(rows):  # what `jaxcnn bench --plot FILE` prints from it
            from jaxcnn.bench import aggregate, format_table
            _walk(aggregate(rows), numbers, values)
            numbers |= _text_numbers(format_table(rows, markdown=True))
    elif path.endswith(".csv"):
        for row in csv.reader(io.StringIO(text)):
            for cell in row:
                try:
                    values.append(float(cell))
                except ValueError:
                    numbers |= _text_numbers(cell)
    else:
        numbers = _text_numbers(text)
    return Source(frozenset(numbers), tuple(v for v in values if v == v and abs(v) != float("inf")))


@functools.lru_cache(maxsize=None)
def _rounded(path: str, decimals: int, scale: float) -> frozenset:
    """A source's values times ``scale`` written with ``decimals`` decimals, as ``_text_numbers``
    writes numbers (with their sign, and as "|" and their magnitude)."""
    out = set()
    for v in load_source(path).values:
        if abs(v * scale) < 1e15:
            x = f"{v * scale:.{decimals}f}"
            out |= {x, "|" + x.lstrip("-")}
    return frozenset(out)


def holds(path: str, number: str, unit: str = "") -> bool:
    """Whether the results file at ``path`` holds ``number`` in ``unit``. A number quoted with
    a sign ("-3.6", "+12.8") must have that sign there; one quoted without may have either."""
    number = number.replace(",", "").replace("−", "-")
    key = number.lstrip("+") if number[0] in "+-" else "|" + number
    if key in load_source(path).numbers:
        return True
    decimals = len(number.partition(".")[2])
    return any(key in _rounded(path, decimals, scale) for scale in SCALES.get(unit, (1,)))


def problems(path: str, text: str | None = None) -> tuple[list[str], int, int]:
    """Failures of one page (one message per number), numbers checked, numbers opted out."""
    page = parse_page(path, text)
    rel = os.path.relpath(path, ROOT)
    out = []
    for q, srcs, title in page.quotes:
        if any(holds(s, q.number, q.unit) for s in srcs):
            continue
        searched = (", ".join(os.path.relpath(s, ROOT) for s in srcs)
                    or f"none: no results file is linked under '{title}'")
        out.append(f"{rel}:{q.line}: {q.number} (in '{q.text}') is not in its sources "
                   f"(searched: {searched})")
    return out, len(page.quotes), page.opted_out


FIX = ("Fix: link the results file (under docs/experiments/ or docs/benchmarks/) that holds "
       "each number in the same section, correct the number to what that file holds, or "
       "regenerate the doc from the file; a number that is not a measured result gets "
       "<!-- not measured: REASON --> after it (see the top of tests/test_doc_numbers.py).")


def _pages() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))


@pytest.mark.parametrize("path", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_quoted_number_is_in_a_results_file_linked_from_its_section(path):
    found, _, _ = problems(path)
    assert not found, (f"{len(found)} quoted number(s) not found in a linked results file:\n"
                       + "\n".join(found) + "\n" + FIX)


# --- the checker itself ------------------------------------------------------------------

@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    yield tmp_path
    load_source.cache_clear()
    _rounded.cache_clear()


def _write(root, files: dict[str, str]) -> str:
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    return str(root / "docs" / "page.md")


def test_checker_fails_a_number_its_source_does_not_hold(fake_root):
    page = _write(fake_root, {
        "docs/experiments/r.json": '{"test_accuracy_mean": 0.9947, "seconds": 6.24}',
        "docs/page.md": "# R\n\nIt reaches 99.9 % in 6.2 s ([data](experiments/r.json)).\n"})
    found, checked, _ = problems(page)
    assert checked == 2
    assert len(found) == 1 and "page.md:3: 99.9 " in found[0]
    assert "docs/experiments/r.json" in found[0]


def test_checker_rounds_values_and_reads_fractions_as_percentages(fake_root):
    page = _write(fake_root, {
        "docs/experiments/r.json": '{"mean": 0.9947, "std": 0.0052, "rate": 1437.4}',
        "docs/experiments/r.md": "| a | b |\n|---|---|\n| 99.47 | 1,300 |\n",
        "docs/page.md": ("# R\n\n99.5 ± 0.5 %, 99.47 %, 1,437 images/s and 1,300 images/s "
                         "([json](experiments/r.json), [md](experiments/r.md))\n")})
    assert problems(page)[:2] == ([], 5)


def test_checker_takes_sources_from_the_section_and_its_subsections_only(fake_root):
    page = _write(fake_root, {
        "docs/experiments/a.json": '{"x": 1.5}',
        "docs/page.md": ("# Top\n\n## One\n\n1.5x here\n\n### Sub\n\n[a](experiments/a.json)\n\n"
                         "## Two\n\n1.5x there\n")})
    found, checked, _ = problems(page)
    assert checked == 2
    assert len(found) == 1 and found[0].startswith(os.path.join("docs", "page.md") + ":13:")
    assert "no results file is linked under 'Two'" in found[0]


def test_checker_reads_tables_units_code_and_opt_outs(fake_root):
    page = _write(fake_root, {
        "docs/benchmarks/b.csv": "model,images_per_s\nm,812.2\n",
        "docs/page.md": (
            "# T\n\n"
            "| model | images/s | batch |\n| --- | ---: | ---: |\n"
            "| m | 812 (9.9x) | 128 |\n\n"                          # 812 ok, 9.9x fails
            "A 3x3 kernel, 28x28x1 images, 4 x 32, `99.9 %` and jax 0.10.2 are no quotes.\n"
            "The 98 % target <!-- not measured: a goal --> and 97.0 % measured.\n"
            "```\n50.5 %\n```\n"
            "[b](benchmarks/b.csv)\n")})
    found, checked, opted = problems(page)
    assert opted == 1
    assert checked == 3  # 812, 9.9 and 97.0
    assert sorted(f.split(": ")[1].split(" ")[0] for f in found) == ["9.9", "97.0"]


def test_checker_reads_jaxcnn_bench_rows_as_bench_reports_them(fake_root):
    row = {"framework": "jaxcnn", "model": "m", "what": "train", "dtype": "float32",
           "device_kind": "cpu", "mode": "step", "batch_size": 100, "status": "ok",
           "compile_seconds": 1.0}
    rows = [dict(row, step_seconds_median=t, step_seconds_min=t, step_seconds_max=t)
            for t in (0.1, 0.3)] + [
        dict(row, framework="torch", step_seconds_median=t, step_seconds_min=t,
             step_seconds_max=t) for t in (0.4, 0.8)]
    page = _write(fake_root, {
        "docs/benchmarks/b.jsonl": "\n".join(json.dumps(r) for r in rows),
        # medians over rounds: jaxcnn 500 images/s (0.2 s), torch 167 (0.6 s): 3.00x
        "docs/page.md": "# B\n\n500 images/s, 167 images/s, 3.00x, 3.10x [b](benchmarks/b.jsonl)\n"})
    found, checked, _ = problems(page)
    assert checked == 4 and len(found) == 1 and "3.10" in found[0]


def test_checker_reads_signs_units_on_the_next_line_and_converted_units(fake_root):
    page = _write(fake_root, {
        "docs/experiments/r.json": ('{"overhead_min": -0.03551, "seconds_per_save": 0.0452, '
                                    '"temporaries_bytes": 50855936, "images_per_s": 7521.2}'),
        "docs/page.md": (
            "# R\n\n"
            "Data: [r](experiments/r.json). Overhead -3.6% (3.6% less), 45 ms per save,\n"
            "48.5 MiB of temporaries and 7,521\n"
            "images/s. Not in it: +3.6% and 45 s.\n"
            "A 32 MiB <!-- not measured: a threshold --> limit, and 4.5 MiB measured.\n")})
    found, checked, opted = problems(page)
    assert opted == 1
    assert checked == 8
    assert sorted(f.split(": ")[1].split(" ")[0] for f in found) == ["+3.6", "4.5", "45"]
    assert any(f.startswith(os.path.join("docs", "page.md") + ":6: 4.5 ") for f in found)
