"""The process `sweep --launcher torchrun` starts on every rank: one training from a JSON config.

    python -m torch.distributed.run --nproc-per-node N -m alpaca_plw.study.worker OUT/launch/plw-0.1.json

The JSON holds a `TrainConfig`'s fields (paths as strings). A library error ends the process
with its one-line message on stderr and its exit code, as the CLI does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    import dataclasses

    from alpaca_plw.errors import PLWError
    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    values = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    for f in dataclasses.fields(TrainConfig):  # paths travel as strings
        if "Path" in str(f.type) and values.get(f.name) is not None:
            values[f.name] = Path(values[f.name])
    try:
        train(TrainConfig(**values))
    except PLWError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
