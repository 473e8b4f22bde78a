"""Before the run folder is claimed: refuse what loading the model would refuse later, so that a
`--force` never touches the old run for a model that cannot load."""

from __future__ import annotations

from pathlib import Path

from alpaca_plw.errors import ConfigError

_HF_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


def check_model(cfg) -> None:
    """Before the run folder is claimed, refuse what loading the model would refuse later: an
    unreadable config (every run); with `--force`, before the old run is touched, also a truncated
    or corrupt safetensors file (its header and size) and an attention implementation this install
    or this model cannot use."""
    if cfg.dry_run:
        return
    from transformers import AutoConfig

    name = str(cfg.model)
    if not Path(name).expanduser().exists() and (name.startswith((".", "/", "~"))
                                                 or name.count("/") > 1):
        raise ConfigError(f"--model {name}: no such directory")  # a path, not a hub id
    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except Exception as exc:  # noqa: BLE001 - a missing or corrupt config raises many types
        untouched = "; the run in the output folder was not touched" if cfg.force else ""
        raise ConfigError(f"--model {cfg.model}: cannot read its config "
                          f"({_first_line(exc)}){untouched}") from None
    if not cfg.force:
        return
    import torch
    from transformers import AutoModelForCausalLM

    _check_safetensors(Path(str(cfg.model)).expanduser())
    if cfg.attn_implementation in _HF_ATTENTION:
        try:
            with torch.device("meta"):  # no memory: the checks transformers runs when loading
                AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
        except Exception as exc:  # noqa: BLE001 - ImportError, ValueError from transformers
            raise ConfigError(f"--attn-implementation {cfg.attn_implementation}: cannot be used "
                              f"with --model {cfg.model} here ({_first_line(exc)}); the run in "
                              "the output folder was not touched") from None


def _check_safetensors(model: Path) -> None:
    if not model.is_dir():
        return
    from safetensors import safe_open

    for file in sorted(model.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError
            raise ConfigError(f"--model {model}: {file.name} is not a readable safetensors file "
                              f"({_first_line(exc)}); the run in the output folder was not "
                              "touched") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
