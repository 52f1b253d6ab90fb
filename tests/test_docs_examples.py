"""The Python examples a new user copies from the README and the model card run as written."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.organism

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/ORGANISM.md"])
def test_python_examples_run(doc):
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no Python example"
    for code in blocks:
        exec(compile(code, doc, "exec"), {"__name__": "__docs__"})
