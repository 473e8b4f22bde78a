"""Checkpoints for `--resume`, and the final model.

`OUTPUT_DIR/checkpoint-<step>/` holds the model's config and the tokenizer, the training state in
safetensors files written by every rank (each its own FSDP shards; rank 0 alone without sharding)
and `trainer_state.json`, their index (checkpoints/state.py): no host ever holds the full model
and optimizer state, and nothing resume reads is pickled. A LoRA checkpoint holds the adapter as
PEFT saves it instead of the model's parameters. A checkpoint is complete once its index is there;
one written before this format (`trainer_state.pt`, train/checkpoints/legacy.py) still resumes.

The final model is saved in `OUTPUT_DIR` itself (through `.final/`, see `save_final`) in
`save_pretrained`'s layout, gathered and written one parameter at a time (checkpoints/shards.py).
Everything is written to a temporary folder and renamed, so a crash never leaves half of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alpaca_plw.data.outputs.atomic import atomic_write_dir
from alpaca_plw.train.checkpoints import shards
from alpaca_plw.train.checkpoints.folders import is_legacy
from alpaca_plw.train.checkpoints.legacy import LEGACY_FILE, load_legacy, read_legacy
from alpaca_plw.train.checkpoints.state import INDEX_FILE, write_state
from alpaca_plw.train.checkpoints.state_index import read_index
from alpaca_plw.train.checkpoints.state_read import restore_model, restore_optimizer
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.finite import check_params

STATE_FILE = LEGACY_FILE  # the trainer state of checkpoints written before issue 24
FINAL_STAGE = ".final"  # the complete final model, before its files move into OUTPUT_DIR


def save_pretrained_dir(target: Path, model, state_dict, tokenizer) -> None:
    """Save model (from `state_dict`, already gathered) and tokenizer into `target` atomically."""
    atomic_write_dir(target, _mapped(target, lambda tmp: (
        model.save_pretrained(tmp, state_dict=state_dict), tokenizer.save_pretrained(tmp))))


def _mapped(target: Path, write):
    """`write` with a full disk reported as one OutputError naming `target`."""

    def run(tmp: Path) -> None:
        try:
            write(tmp)
        except OSError:
            raise  # `atomic_write_dir` names the target and the reason (exit 3)
        except Exception as exc:  # noqa: BLE001 - torch and safetensors report a full disk as
            # RuntimeError ("file write failed") or SafetensorError ("No space left on device")
            from alpaca_plw.errors import OutputError, PLWError

            if isinstance(exc, PLWError):
                raise
            raise OutputError(f"{target}: cannot write it ({type(exc).__name__}: "
                              f"{_first_line(exc)}); the previous checkpoint, if any, is "
                              "untouched") from None

    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def save_final(output_dir: Path, model, tokenizer, d: Dist,
               max_shard_bytes: int = shards.MAX_SHARD_BYTES) -> None:
    """Write the final model and tokenizer into `output_dir` (beside checkpoints and the log);
    every rank calls it (`model` as trained: wrapped, possibly sharded).

    The weights are gathered one tensor at a time and rank 0 writes each at once into files of at
    most `max_shard_bytes` (`save_pretrained`'s layout and names; one `model.safetensors` when it
    fits), so its host holds one parameter, never the model. A LoRA run saves its adapter with
    PEFT. The whole model is first written to `.final/` and renamed into place in one step, so
    `.final/` only ever exists complete; its files are then moved into `output_dir`. A run killed
    while they move leaves the rest in `.final/`, and `complete_final` (the next `--resume`) moves
    them on: the model is complete once `.final/` is gone, and `run.json` says `finished` after."""
    hf = unwrap(model)
    target = output_dir / FINAL_STAGE
    if _is_peft(hf):
        state = adapter_state(model, d)
        if d.is_main:
            save_pretrained_dir(target, hf, state, tokenizer)
    else:
        tied = _tied_output_key(hf)
        entries = shards.gathered_entries(hf, d.device, [tied] if tied else [])
        if d.is_main:
            atomic_write_dir(target, _mapped(target, lambda tmp: (
                shards.write_hf_weights(tmp, entries, max_shard_bytes), _save_config(hf, tmp),
                tokenizer.save_pretrained(tmp))))
        else:
            shards.write_hf_weights(None, entries)  # joins each gather
    if d.is_main:
        complete_final(output_dir)
    d.barrier()


def _save_config(hf_model, folder: Path) -> None:
    """What `save_pretrained` writes beside the weights: config.json (and generation_config.json)."""
    hf_model.config.save_pretrained(folder)
    if hf_model.can_generate() and getattr(hf_model, "generation_config", None) is not None:
        hf_model.generation_config.save_pretrained(folder)


def _is_peft(hf_model) -> bool:
    return hasattr(hf_model, "peft_config")


def complete_final(output_dir: Path) -> bool:
    """Move every file left in `output_dir/.final/` into `output_dir`; False when there is none."""
    from alpaca_plw.data.outputs.publish import kill_point, writing

    staging = output_dir / FINAL_STAGE
    if not staging.is_dir():
        return False
    with writing(output_dir):
        for item in sorted(staging.iterdir()):
            os.replace(item, output_dir / item.name)
            kill_point("final-between-files")
        fd = os.open(output_dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the renames reach the disk before `.final/` goes
        finally:
            os.close(fd)
        staging.rmdir()
    return True


def unwrap(model):
    """The Hugging Face model inside the DDP/FSDP and `WeightedCausalLM` wrappers."""
    return getattr(model, "module", model).model


def sharded(model) -> bool:
    """True for an FSDP-sharded model (parameters are DTensors), also with one process."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def adapter_state(model, d: Dist) -> dict:
    """The trainable tensors of a LoRA model (its adapter, what PEFT's `save_pretrained` keeps),
    on every rank, gathered one at a time when sharded; the frozen base is never gathered. Keys
    as `save_pretrained` expects them."""
    hf = unwrap(model)
    trainable = {name for name, param in hf.named_parameters() if param.requires_grad}
    return {e.name: e.produce().detach().to("cpu")
            for e in shards.gathered_entries(hf, d.device) if e.name in trainable}


def _tied_output_key(hf_model) -> str | None:
    """The state-dict key of the output embedding when the config ties it to the input one."""
    config = hf_model.config.get_text_config() if hasattr(hf_model.config, "get_text_config") \
        else hf_model.config
    if not getattr(config, "tie_word_embeddings", False):
        return None
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    name = next((n for n, m in hf_model.named_modules() if m is head), None)
    return None if not name else f"{name}.weight"




def save_checkpoint(target: Path, model, optimizer, scheduler, tokenizer, step: int, d: Dist) -> None:
    """Every rank writes its part of `target` (train/checkpoints/state.py) into rank 0's temporary
    folder; rank 0 adds config, tokenizer (a LoRA run: the adapter) and, once every rank has
    written, the index, then renames the folder into place."""
    check_params(model, d, target.name, step, target.parent)  # never a non-finite checkpoint
    hf = unwrap(model)
    adapter = adapter_state(model, d) if _is_peft(hf) else None

    def write(tmp: Path | None) -> None:
        folder = shards.share_folder(tmp, d.world)
        if folder is None:  # rank 0 could not create the temporary folder
            from alpaca_plw.errors import OutputError

            raise OutputError(f"{target}: rank 0 could not create it")
        failure = None
        try:
            index = write_state(folder, model, optimizer, scheduler, step, d.rank, d.world,
                                with_model=adapter is None)
            if d.is_main:
                if adapter is None:
                    _save_config(hf, folder)
                else:
                    hf.save_pretrained(folder, state_dict=adapter)
                tokenizer.save_pretrained(folder)
        except Exception as exc:  # noqa: BLE001 - reported below, after the other ranks answer
            failure = exc
        if not shards.all_ok(failure is None, d):
            if failure is not None:
                raise failure
            from alpaca_plw.errors import OutputError

            raise OutputError(f"{target}: another process could not write its part; the previous "
                              "checkpoint, if any, is untouched")
        if d.is_main:  # last: the index makes the checkpoint complete
            (folder / INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")

    if d.is_main:
        began = []
        try:
            atomic_write_dir(target, _mapped(target, lambda tmp: (began.append(tmp), write(tmp))))
        except BaseException:
            if not began and d.world > 1:
                shards.share_folder(None, d.world)  # the others stop instead of waiting
            raise
    else:
        _mapped(target, write)(None)
    d.barrier()


def read_state(path: Path, mmap: bool = False) -> dict:
    """The checked trainer state of the checkpoint `path` (at least its `step`): the JSON index,
    or the `weights_only` torch file of a checkpoint written before issue 24 (`mmap`: mapped)."""
    return read_legacy(path, mmap=mmap) if is_legacy(path) else read_index(path)


def restore_weights(path: Path, model, d: Dist, device=None) -> None:
    """Fill `model` (built on `meta` from the checkpoint's config) with the checkpoint's weights:
    the Hugging Face model before wrapping (one process, DDP), or after FSDP wrapping, each rank
    its own shards (on `device`, default this rank's)."""
    index = read_index(path)
    if index["world_size"] != d.world and index["sharded"]:
        raise _world(path, index["world_size"], d.world)
    restore_model(path, model, index, d.rank, d.world, device or d.device)


def load_checkpoint(path: Path, model, optimizer, scheduler, d: Dist) -> int:
    """Restore optimizer and scheduler (the model was loaded with `restore_weights`, or from the
    folder itself when it predates issue 24); returns the step the checkpoint was taken after."""
    if is_legacy(path):
        return load_legacy(path, model, optimizer, scheduler, d,
                           distributed=not (d.world == 1 and not sharded(model)))
    index = read_index(path)
    if index["world_size"] != d.world and index["sharded"]:
        raise _world(path, index["world_size"], d.world)
    return restore_optimizer(path, model, optimizer, scheduler, index, d.rank, d.world)


def _world(path: Path, then: int, now: int):
    from alpaca_plw.errors import InputError

    return InputError(f"{path}: its shards were written by {then} processes and this run has "
                      f"{now}; resume with {then}")
