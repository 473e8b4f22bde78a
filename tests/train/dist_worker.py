"""Run under `torchrun --nproc_per_node 2`: several trainings in one process group, so the 2-process
tests pay for one spawn. argv[1] is a JSON object {"base": TrainConfig keyword arguments (paths as
strings), "runs": {name: overrides}}; each run writes to base["output_dir"]/name."""

import json
import sys
from pathlib import Path

from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.trainer import train


def main() -> None:
    spec = json.loads(sys.argv[1])
    base = dict(spec["base"])
    root = Path(base.pop("output_dir"))
    for key in ("weights_dir", "eval_weights"):
        if base.get(key) is not None:
            base[key] = Path(base[key])
    for name, overrides in spec["runs"].items():
        train(TrainConfig(output_dir=root / name, **{**base, **overrides}))


if __name__ == "__main__":
    main()
