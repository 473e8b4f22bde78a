"""`sweep`: train one model per PLW value with the same seed, data and options.

Layout of OUT:

    OUT/sweep.json           the grid, the options, and per run its status and final losses
    OUT/weights/plw-<v>/     each PLW's weights (tokenized once, see `grid`)
    OUT/launch/plw-<v>.json  the TrainConfig a torchrun worker reads (with --launcher torchrun)
    OUT/plw-<v>/             the trainer's output folder: final model, checkpoint-*/, log.jsonl

Resumable: a finished run (`runs.run_finished`) is skipped; one with a checkpoint, or with its
final model still staged in `.final/`, resumes (`train --resume`); one that stopped before its
first checkpoint (only log.jsonl written) starts again. Runs checkpoint by default (every
`DEFAULT_SAVE_STEPS` steps, the newest `DEFAULT_SAVE_TOTAL_LIMIT` kept) unless `--save-steps`
or `--save-total-limit` says otherwise. PLW values may be added to a sweep: the same command
with more values derives their weights from the stored tokens and trains only those.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alpaca_plw.data.chat.weights import ChatOptions
from alpaca_plw.data.outputs.atomic import atomic_write, text_writer
from alpaca_plw.errors import ConfigError, InputError, PLWError
from alpaca_plw.study.grid import prepare_weights, run_name
from alpaca_plw.study.runs import LOG_FILE, final_losses, final_staged, read_log, run_finished

SWEEP_FILE = "sweep.json"
LAUNCHERS = ("none", "torchrun")
# TrainConfig fields the sweep owns: never taken from the user's train options.
_OWNED = ("weights_dir", "model", "output_dir", "resume", "force", "dry_run")
# Checkpoints by default, so a crash late in a long run does not restart it from zero; rotation
# keeps disk bounded (one checkpoint of a 7B full fine-tune with Adam is ~80 GB).
DEFAULT_SAVE_STEPS = 200
DEFAULT_SAVE_TOTAL_LIMIT = 1

Event = Callable[[str, dict], None]


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the data, the model, the grid and the `train` options shared by every run."""

    source: str
    model: str
    output_dir: Path
    plws: list[float]
    train: dict = field(default_factory=dict)  # TrainConfig fields other than _OWNED
    launcher: str = "none"
    nproc_per_node: int = 1
    max_length: int = 512
    tokenizer: str | None = None
    dry_run: bool = False
    chat: ChatOptions | None = None  # conversations: --chat-template, --role-weights, ...

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if self.nproc_per_node < 1:
            raise ConfigError("--nproc-per-node must be at least 1")
        if self.nproc_per_node > 1 and self.launcher != "torchrun":
            raise ConfigError("--nproc-per-node above 1 needs --launcher torchrun")
        owned = sorted(set(self.train) & set(_OWNED))
        if owned:
            raise ConfigError(f"the sweep sets {', '.join(owned)} itself; leave them out")
        if not self.plws:
            raise ConfigError("--plw: no values given")

    def record(self) -> dict:
        """What must match when a sweep folder is reused (resume, or PLWs added) - everything but
        the launcher and the PLW values (`plws` is written as the union of every call's)."""
        body = {"source": str(self.source), "model": self.model, "plws": self.plws,
                "max_length": self.max_length, "tokenizer": self.tokenizer,
                "train": {k: str(v) if isinstance(v, Path) else v
                          for k, v in sorted(self.train.items())}}
        if self.chat is not None and not self.chat.is_default():
            body["chat"] = {"chat_template": self.chat.chat_template,
                            "role_weights": dict(sorted(self.chat.role_weights.items())),
                            "assistant_turns": self.chat.assistant_turns}
        return body


def train_config(cfg: SweepConfig, plw: float, weights_dir: Path, resume: bool, force: bool):
    from alpaca_plw.train.config import TrainConfig

    defaults = {} if "save_steps" in cfg.train or "save_total_limit" in cfg.train else \
        {"save_steps": DEFAULT_SAVE_STEPS, "save_total_limit": DEFAULT_SAVE_TOTAL_LIMIT}
    local = Path(cfg.model).expanduser()
    # absolute, so a LoRA run's adapter_config.json names a base that `eval` finds from anywhere
    model = str(local.resolve()) if local.is_dir() else cfg.model
    return TrainConfig(weights_dir=weights_dir, model=model,
                       output_dir=cfg.output_dir / run_name(plw), resume=resume, force=force,
                       **{"tokenizer": cfg.tokenizer, **defaults, **cfg.train})


def run_state(run_dir: Path) -> str:
    """`done` (finished, `runs.run_finished`), `resume` (a checkpoint to continue from, or a final
    model still staged in `.final/`), `restart` (stopped before its first checkpoint) or `new`."""
    from alpaca_plw.train.checkpoints.folders import latest_checkpoint

    if run_finished(run_dir):
        return "done"
    if final_staged(run_dir) or latest_checkpoint(run_dir) is not None:
        return "resume"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        # what a run writes before its first checkpoint: its log, markers (dotfiles), JSON records
        extra = sorted(p.name for p in run_dir.iterdir()
                       if not (p.is_file() and (p.name == LOG_FILE or p.name.startswith(".")
                                                or p.suffix == ".json")))
        if extra:
            raise ConfigError(f"{run_dir}: holds {', '.join(extra[:3])} but no final model and no "
                              "complete checkpoint; it was not written by this sweep, or a save was "
                              "cut off. Move it away to train this PLW again")
        return "restart"
    return "new"


def _check_folder(cfg: SweepConfig) -> dict | None:
    """The sweep.json already in OUT (None if none), after checking it is this sweep's."""
    path = cfg.output_dir / SWEEP_FILE
    if cfg.output_dir.exists() and not cfg.output_dir.is_dir():
        raise ConfigError(f"--output-dir {cfg.output_dir}: exists and is not a directory")
    if not path.is_file():
        if cfg.output_dir.is_dir() and any(cfg.output_dir.iterdir()):
            raise ConfigError(f"--output-dir {cfg.output_dir}: not empty and holds no {SWEEP_FILE}; "
                              "a sweep writes only into an empty folder or its own")
        return None
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{path}: cannot read it ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); it is not a "
                         "sweep record this sweep can continue: move it away or use another "
                         "--output-dir") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("config", {}), dict) \
            or not isinstance(previous.get("runs", []), list):
        raise InputError(f"{path}: not a sweep record written by alpaca-plw (expected an object "
                         "with 'config' and 'runs'); move it away or use another --output-dir")
    old, new = previous.get("config", {}), cfg.record()
    differ = sorted(k for k in set(old) | set(new) if k != "plws" and old.get(k) != new.get(k))
    if differ:
        raise ConfigError(f"--output-dir {cfg.output_dir}: a sweep with other settings lives there "
                          f"(differs in {', '.join(differ)}); use another --output-dir")
    return previous


def _write_sweep(cfg: SweepConfig, runs: list[dict]) -> None:
    runs = sorted(runs, key=lambda r: r["plw"])
    body = {"config": {**cfg.record(), "plws": [r["plw"] for r in runs]}, "runs": runs}
    atomic_write(cfg.output_dir / SWEEP_FILE,
                 text_writer(json.dumps(body, indent=2, sort_keys=True) + "\n"))


def _entry(plw: float, status: str, run_dir: Path) -> dict:
    """A run's sweep.json entry: its last step's weighted loss (by its own PLW) and the losses
    that compare across PLW (`losses.py`): completion loss and unweighted token loss."""
    from alpaca_plw.study.losses import final_token_loss

    losses = final_losses(read_log(run_dir)) if run_dir.is_dir() else {}
    return {"plw": plw, "folder": run_name(plw), "status": status,
            "steps": losses.get("steps"), "train_loss": losses.get("train_loss"),
            "completion_loss": losses.get("completion_loss"),
            "token_loss": final_token_loss(run_dir, losses) if losses else None,
            "eval_loss": losses.get("eval_loss")}


def _launch_torchrun(cfg: SweepConfig, train_cfg, plw: float) -> None:
    """Run one training under torchrun: the TrainConfig goes through a JSON file to the worker."""
    launch = cfg.output_dir / "launch" / f"{run_name(plw)}.json"
    values = {f.name: getattr(train_cfg, f.name) for f in dataclasses.fields(train_cfg)}
    values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
    atomic_write(launch, text_writer(json.dumps(values, indent=2, sort_keys=True) + "\n"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={cfg.nproc_per_node}", "-m", "alpaca_plw.study.worker", str(launch)]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise PLWError(f"{run_name(plw)}: torchrun exited with status {code} (its output is above); "
                       "run the sweep again to resume")


def sweep(cfg: SweepConfig, make_base, on_event: Event | None = None) -> list[dict]:
    """Train every PLW of `cfg` in turn; returns the sweep.json run entries.

    `make_base(plw, out)` writes the tokenized weights of `cfg.source` (called at most once).
    `on_event(kind, info)` hears `run` (before each run: plw, folder, state) and `step` (log
    records of in-process runs).
    """
    from alpaca_plw.data.outputs.safety import claim
    from alpaca_plw.data.tokenizer import resolve_spec
    from alpaca_plw.train.trainer import train

    inputs = [("source", cfg.source), ("model", cfg.model),
              ("tokenizer", resolve_spec(cfg.tokenizer))]
    with claim([cfg.output_dir], inputs, False, "sweep", exists_ok=True):  # locked; no input inside
        return _sweep(cfg, make_base, on_event or (lambda kind, info: None), train)


def _earlier_runs(previous: dict | None, plws: list[float]) -> dict[float, dict]:
    """Entries of sweep.json for PLWs an earlier call trained that this call does not name."""
    found = {}
    for entry in (previous or {}).get("runs", []):
        if isinstance(entry, dict) and isinstance(entry.get("plw"), (int, float)) \
                and run_name(entry["plw"]) not in {run_name(p) for p in plws}:
            found[float(entry["plw"])] = entry
    return found


def _sweep(cfg: SweepConfig, make_base, emit: Event, train) -> list[dict]:
    previous = _check_folder(cfg)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    folders = prepare_weights(cfg.source, cfg.plws, cfg.output_dir / "weights", make_base,
                              cfg.chat,
                              allow_partial=bool(cfg.train.get("allow_partial_shards")))
    states = {plw: run_state(cfg.output_dir / run_name(plw)) for plw in cfg.plws}
    entries = _earlier_runs(previous, cfg.plws)
    entries.update({plw: _entry(plw, "done" if s == "done" else "pending",
                                cfg.output_dir / run_name(plw)) for plw, s in states.items()})
    _write_sweep(cfg, list(entries.values()))
    for plw in cfg.plws:
        run_dir = cfg.output_dir / run_name(plw)
        state = states[plw]
        emit("run", {"plw": plw, "folder": run_dir, "state": state})
        if state == "done":
            continue
        train_cfg = train_config(cfg, plw, folders[plw], resume=state == "resume",
                                 force=state == "restart")
        entries[plw]["status"] = "running"
        _write_sweep(cfg, list(entries.values()))
        try:
            if cfg.launcher == "torchrun":
                _launch_torchrun(cfg, train_cfg, plw)
            else:
                train(train_cfg, on_step=lambda r, plw=plw: emit("step", {"plw": plw, **r}))
        except (PLWError, KeyboardInterrupt):
            entries[plw] = _entry(plw, "interrupted", run_dir)
            _write_sweep(cfg, list(entries.values()))
            raise
        entries[plw] = _entry(plw, "done", run_dir)
        _write_sweep(cfg, list(entries.values()))
    return sorted(entries.values(), key=lambda r: r["plw"])
