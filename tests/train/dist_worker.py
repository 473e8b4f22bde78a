"""Run under `torchrun --nproc_per_node 2`: several trainings in one process group, so the 2-process
tests pay for one spawn. argv[1] is a JSON object {"base": TrainConfig keyword arguments (paths as
strings), "runs": {name: overrides}}; each run writes to base["output_dir"]/name."""

import json
import sys
from pathlib import Path

from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.trainer import train


def _count_loads(log: Path) -> None:
    """Append "<run> <rank>" to `log` each time a process reads a model's weights from disk."""
    import os

    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        with log.open("a") as out:
            out.write(f"{os.environ.get('PLW_RUN')} {os.environ['RANK']}\n")
        return original(cls, *args, **kwargs)

    AutoModelForCausalLM.from_pretrained = classmethod(counted)


def main() -> None:
    import os

    spec = json.loads(sys.argv[1])
    if spec.get("count_loads"):
        _count_loads(Path(spec["count_loads"]))
    base = dict(spec["base"])
    root = Path(base.pop("output_dir"))
    for key in ("weights_dir", "eval_weights"):
        if base.get(key) is not None:
            base[key] = Path(base[key])
    for name, overrides in spec["runs"].items():
        os.environ["PLW_RUN"] = name
        overrides = dict(overrides)
        crash_at, folder = overrides.pop("_crash_at", None), overrides.pop("_dir", name)
        config = TrainConfig(output_dir=root / folder, **{**base, **overrides})
        if crash_at is None:
            train(config)
            continue
        from alpaca_plw.train import trainer

        original = trainer._optimizer_step

        def crashing(run, step, original=original, crash_at=crash_at):
            if step == crash_at:  # every rank stops before the step's first collective
                raise _Crash
            return original(run, step)

        trainer._optimizer_step = crashing
        try:
            train(config)
        except _Crash:
            pass
        finally:
            trainer._optimizer_step = original


class _Crash(Exception):
    pass


if __name__ == "__main__":
    main()
