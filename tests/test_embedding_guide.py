"""The runnable example of docs/embedding.md runs, and its round gives the survivors' exact sum."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "embedding.md"


def _example() -> str:
    text = GUIDE.read_text()
    match = re.search(r"<!-- embedding-example -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/embedding.md lost its marked example block"
    return match.group(1)


def test_embedding_guide_example_sums_the_survivors() -> None:
    namespace: dict[str, object] = {"__name__": "embedding_example"}
    exec(compile(_example(), str(GUIDE), "exec"), namespace)
    result = namespace["result"]
    total = np.asarray(namespace["total"])
    updates = namespace["updates"]
    assert result.survivors == (1, 2, 3, 4)  # type: ignore[attr-defined]
    expected = sum(updates[p] for p in (1, 2, 3, 4))  # type: ignore[index]
    assert np.max(np.abs(total - expected)) < 1e-6
