"""One optional file output of a reading command (`stats --plot`, `eval -o`, `fit --plot`,
`analyze --plot`), held through `safety.claim` like the writing commands' outputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alpaca_plw.data.outputs.safety import claim


@contextmanager
def file_output(path: Path | None, inputs: Sequence[tuple[str, object]],
                force: bool) -> Iterator[None]:
    """Hold `path` (None: nothing to hold) while the command works and writes it: refused with exit
    3 when it is, lies inside or contains an input, cannot be a file, or exists without `force`;
    locked against a second writer; leftovers of a killed write are cleaned first."""
    if path is None:
        yield
        return
    with claim([Path(path)], inputs, force):
        yield
