"""Every ``offsetjax.…`` name written in the README, in docs/ and in the library's docstrings and
comments resolves to a module or an attribute: a renamed or removed public name fails here
instead of leaving a reader at a dead reference."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: A dotted name starting with the package (not a path, not part of another word).
NAME = re.compile(r"(?<![\w/.-])offsetjax(?:\.[A-Za-z_]\w*)+")
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "offsetjax").rglob("*.py"))]


def resolves(name: str) -> bool:
    """Whether ``name`` is a module, or an attribute path below the longest importable prefix."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_every_offsetjax_name_written_resolves(path):
    names = {match.group(0).rstrip(".") for match in NAME.finditer(path.read_text())}
    assert [name for name in sorted(names) if not resolves(name)] == []
