"""The tutorial's programs print exactly what docs/cycle-simulator.md says they print."""

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "cycle-simulator.md"
PAIRS = re.findall(r"```python\n(.*?)```\n.*?```\n(.*?)```", DOC.read_text(), re.S)


def test_the_tutorial_has_examples():
    assert len(PAIRS) == 3


@pytest.mark.parametrize("code, expected", PAIRS, ids=["broadcast", "chain reduce", "library"])
def test_tutorial_output(code, expected):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})
    assert out.getvalue().strip() == expected.strip()
