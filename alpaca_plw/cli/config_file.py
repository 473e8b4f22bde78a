"""`--config FILE` for `train` and `sweep`: the options in a YAML or TOML file, the command line on top.

Keys are option names, written as on the command line without the dashes (`max-steps`) or with
underscores (`max_steps`); values are what the option takes (`packing: false` for
`--no-packing`, a list or a comma string for comma-separated options). A key the command does not
have is one error line naming it and the known ones. A relative path in the file is read from the
directory the command runs in, as on the command line.

    # run.yaml                          alpaca-plw train --config run.yaml --lr 1e-5
    weights_dir: weights/               (the command line wins: lr 1e-5; a list for shards)
    model: llama-7b/
    output-dir: run/
    lr: 2.0e-5
    gradient-checkpointing: true

The file only supplies defaults: every option given on the command line overrides it, and `train`
records the resolved options in `run.json` as always. For `sweep`, keys that are not sweep's own
are passed to every run as `train` options (as if written after the sweep's own options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.errors import ConfigError

TRAIN_ARGS = "config_train_args"  # ctx.meta key: sweep's train options from the file


def read_config(path: Path) -> dict:
    """The mapping in a .yaml/.yml/.toml file (ConfigError for anything else)."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)  # plain data only: no tags that build Python objects
        else:
            raise ConfigError(f"--config {path}: expected a .yaml, .yml or .toml file")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml and tomllib raise their own error types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config {path}: not valid {suffix[1:].upper()} ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the file must hold a mapping of option names to values")
    return data


def _as_cli(name: str, value) -> list[str]:
    """A train option for sweep's pass-through, as command-line words."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else ["--no-" + flag[2:]] if name == "packing" else []
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return [flag, str(value)]


def _shown(param) -> str:
    """An option's name as a config key: its long flag without dashes (`compile`, not the Python
    parameter name `compile_model`)."""
    longs = [o[2:] for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else param.name.replace("_", "-")


def apply(ctx: typer.Context, path: Path | None, passthrough: bool = False) -> None:
    """Load `path` into the command's defaults (`ctx.default_map`); with `passthrough`, keys the
    command does not have go to `ctx.meta[TRAIN_ARGS]` instead of being refused."""
    from alpaca_plw.cli.options import fail

    if path is None or ctx.resilient_parsing:
        return
    try:
        data = read_config(path)
        params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
        aliases = {}
        for p in params.values():
            aliases[p.name] = p.name
            for opt in getattr(p, "opts", []):
                if opt.startswith("--"):
                    aliases[opt[2:].replace("-", "_")] = p.name
        defaults, extra, unknown = {}, [], []
        for key, value in data.items():
            name = aliases.get(str(key).replace("-", "_"))
            if name is not None and getattr(params[name], "nargs", 1) == -1:  # train's WEIGHTS_DIR...
                defaults[name] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
            elif name is not None:
                defaults[name] = ",".join(map(str, value)) if isinstance(value, list) else value
            elif passthrough:
                extra += _as_cli(str(key).replace("-", "_"), value)
            else:
                unknown.append(str(key))
        if unknown:
            known = ", ".join(sorted(_shown(p) for p in params.values()))
            raise ConfigError(f"--config {path}: unknown option{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(unknown)} for `{ctx.info_name}` (known: {known})")
    except ConfigError as exc:
        fail(exc)
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[TRAIN_ARGS] = extra


def _train_callback(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    apply(ctx, value)
    return value


def _sweep_callback(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    apply(ctx, value, passthrough=True)
    return value


_HELP = ("YAML or TOML file of options (keys as on the command line, without dashes); the command "
         "line overrides it.")
TrainConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help=_HELP, is_eager=True, callback=_train_callback, show_default=False)]
SweepConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help=_HELP + " Keys that are not sweep's own are train options for every run.",
    is_eager=True, callback=_sweep_callback, show_default=False)]
