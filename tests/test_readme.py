"""The README's Python example runs as written and prints what the README says it prints.

As in the docs (see tests/test_docs.py), the ```text block right after the ```python
block is its expected stdout, compared with doctest's OutputChecker (ELLIPSIS and
NORMALIZE_WHITESPACE: `...` stands for values that vary).
"""

import doctest
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_library_example_runs(capsys):
    readme = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(r"^```python\n(.*?)^```[ \t]*\n", readme, re.S | re.M)
    assert m, "README has no python example"
    output = re.compile(r"\s*^```text[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
    out_block = output.match(readme, m.end())
    assert out_block, "the README's python example has no ```text block with its output after it"
    namespace: dict = {"__name__": "__main__"}
    exec(compile(m.group(1), "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Total params" in out and "accuracy" in out
    state = namespace["state"]
    assert int(state.step) == 5 * (len(namespace["ds"].train) // 64)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    checker = doctest.OutputChecker()
    want = out_block.group(1)
    assert checker.check_output(want, out, flags), (
        "README's example printed something else:\n"
        + checker.output_difference(doctest.Example("", want), out, flags))
