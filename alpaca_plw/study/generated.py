"""What a run's generations say (the paper's Figure 2c and 2d), read from `alpaca-plw generate`.

`generate` writes, in each run folder, `generations/<NAME>.jsonl` (one object per prompt: `index`,
`instruction`, `input`, `prompt`, `output`, `output_tokens`, `finish` "eos" or "length",
`reference`: the training completion or null) and `generations/<NAME>.json` (the set's record:
`prompts`, `n`, `seed`, `sampling`, `complete`, `count`, ...).

- **Memorization** (Figure 2c): corpus BLEU of the outputs against the references, sacrebleu's
  `corpus_bleu(outputs, [references])` with its defaults (13a tokenizer, mixed case, exponential
  smoothing, one reference each), on a set made from a seeded sample of the run's training prompts.
  Outputs ["the cat sat on the mat"] against ["the cat sat on a mat"]: precisions 5/6, 3/5, 2/4,
  1/3, no brevity penalty, BLEU = 100 (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = 53.73.
- **Generation length** (Figure 2d): mean and median of `output_tokens` over the set, and how many
  outputs stopped at the token limit (`finish` "length") rather than at EOS.

A set is used only when its record says `complete` and its JSONL holds exactly `count` records;
otherwise the run gets no value and a note saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpaca_plw.errors import InputError, abbreviate

FOLDER = "generations"


class Unusable(Exception):
    """A run's set is missing or incomplete: the run gets no value and this note."""


@dataclass
class GenerationSet:
    name: str
    meta: dict
    records: list[dict]

    @property
    def key(self) -> dict[str, str]:
        """What must agree between runs for their values to compare (`generate`'s own list)."""
        prompts = self.meta.get("prompts") if isinstance(self.meta.get("prompts"), dict) else {}
        values = {"prompts.sha256": prompts.get("sha256"),
                  "prompts.records": prompts.get("records")}
        values.update({k: self.meta.get(k) for k in ("n", "seed", "sampling", "template")})
        return {k: json.dumps(v, sort_keys=True) for k, v in values.items()}


def differing(keys: list[dict[str, str]]) -> list[str]:
    """The settings (of `GenerationSet.key`) on which some of `keys` disagree."""
    return [k for k in keys[0] if len({key[k] for key in keys}) > 1] if keys else []


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(path: Path, number: int, row, most: int | None = None) -> dict:
    """One line as `generate` writes it; `most`: the set's max_new_tokens, when it says."""
    where = f"{path}, line {number}"
    if not isinstance(row, dict):
        raise InputError(f"{where}: a JSON {type(row).__name__}, expected an object")
    if not _int(row.get("index")):
        raise InputError(f"{where}: 'index' {row.get('index')!r} is not an integer")
    if not isinstance(row.get("output"), str):
        raise InputError(f"{where}: 'output' is not a string")
    if not _int(row.get("output_tokens")) or not 0 <= row["output_tokens"] < 2 ** 53:
        raise InputError(f"{where}: 'output_tokens' {abbreviate(row.get('output_tokens'))} is "
                         "not a count of tokens")
    if most is not None and row["output_tokens"] > most:
        raise InputError(f"{where}: 'output_tokens' {row['output_tokens']} is above the set's "
                         f"max_new_tokens {most}")
    if row.get("finish") not in ("eos", "length"):
        raise InputError(f"{where}: 'finish' {row.get('finish')!r} is neither 'eos' nor 'length'")
    if row.get("reference") is not None and not isinstance(row["reference"], str):
        raise InputError(f"{where}: 'reference' is neither a string nor null")
    return row


def read_set(run_dir: Path, name: str) -> GenerationSet:
    """The complete set `name` of a run; `Unusable` when it is missing or unfinished, `InputError`
    when its files are not what `generate` writes."""
    folder = Path(run_dir) / FOLDER
    meta_path, rows_path = folder / f"{name}.json", folder / f"{name}.jsonl"
    if not meta_path.is_file() or not rows_path.is_file():
        found = sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        have = f"it has {', '.join(found)}" if found else "it has none"
        raise Unusable(f"no generations set {name!r} ({FOLDER}/{name}.json and .jsonl; {have}); "
                       f"make it with `alpaca-plw generate {run_dir} ...`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"{meta_path}: cannot be read as JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("complete"), bool) \
            or not _int(meta.get("count")):
        raise InputError(f"{meta_path}: not a generations record (needs 'complete' true/false "
                         "and an integer 'count')")
    try:
        text = rows_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{rows_path}: cannot be read ({type(exc).__name__})") from None
    if not meta["complete"]:  # checked first: an unfinished set may end in a torn line
        raise Unusable(f"generations set {name!r} is incomplete ({text.count(chr(10))} of "
                       f"{meta.get('n', '?')} records so far, its .json says complete: false); "
                       "finish it by running the same `alpaca-plw generate` again")
    sampling = meta.get("sampling")
    most = sampling.get("max_new_tokens") if isinstance(sampling, dict) else None
    most = most if _int(most) else None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): see read_lines
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise InputError(f"{rows_path}, line {number}: not JSON ({line[:60]!r})") from None
        records.append(_check(rows_path, number, row, most))
    if len(records) != meta["count"]:
        raise Unusable(f"generations set {name!r} holds {len(records)} records but its .json "
                       f"says count {meta['count']}; make it again with `alpaca-plw generate`")
    if not records:
        raise Unusable(f"generations set {name!r} holds no records")
    indexes = [r["index"] for r in records]
    if len(set(indexes)) != len(indexes):
        twice = sorted({i for i in indexes if indexes.count(i) > 1})[:3]
        raise InputError(f"{rows_path}: index {twice} appears more than once")
    return GenerationSet(name, meta, sorted(records, key=lambda r: r["index"]))


def training_sha256(run_dir: Path) -> str | None:
    """The sha256 of the data the run trained on (`run.json` -> its weights' source), or None."""
    try:
        body = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
        value = body["weights"]["meta"]["source"]["sha256"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and value else None


def not_training_note(run_dir: Path, gen: GenerationSet) -> str | None:
    """A note when the set's prompts are known not to be the run's training data."""
    prompts = gen.meta.get("prompts") if isinstance(gen.meta.get("prompts"), dict) else {}
    made, trained = prompts.get("sha256"), training_sha256(run_dir)
    if made and trained and made != trained:
        return (f"set {gen.name!r} was made from prompts with sha256 {str(made)[:12]}..., the "
                f"run trained on {trained[:12]}... (run.json): memorization is meant on the "
                "run's training prompts")
    return None


def corpus_bleu(outputs: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of `outputs` against one reference each, default settings.

    >>> round(corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]), 2)
    53.73
    """
    from alpaca_plw.extras import require

    sacrebleu = require("sacrebleu", "alpaca-plw analyze --memorization", "study")
    return float(sacrebleu.corpus_bleu(list(outputs), [list(references)]).score)


def bleu_signature() -> str:
    """sacrebleu's signature of the settings `corpus_bleu` uses (e.g. nrefs:1|case:mixed|eff:no|
    tok:13a|smooth:exp|version:2.6.0), for the record."""
    from alpaca_plw.extras import require

    require("sacrebleu", "alpaca-plw analyze --memorization", "study")
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    metric.corpus_score(["a"], [["a"]])  # sacrebleu knows the reference count only after a call
    return str(metric.get_signature())


def memorization(gen: GenerationSet) -> float:
    """Corpus BLEU of the set's outputs against their references (the training completions)."""
    missing = [r["index"] for r in gen.records if r.get("reference") is None]
    if missing:
        raise InputError(f"generations set {gen.name!r}: {len(missing)} record(s) have no "
                         f"reference (e.g. index {missing[0]}); memorization needs the training "
                         "completion of every prompt: make the set from the run's training data")
    return corpus_bleu([r["output"] for r in gen.records], [r["reference"] for r in gen.records])


def lengths(gen: GenerationSet) -> tuple[float, float, int]:
    """(mean, median, how many stopped at the token limit) of the outputs' token counts."""
    tokens = np.array([r["output_tokens"] for r in gen.records], dtype=np.float64)
    cut = sum(1 for r in gen.records if r["finish"] == "length")
    return float(tokens.mean()), float(np.median(tokens)), cut


__all__ = ["FOLDER", "GenerationSet", "Unusable", "bleu_signature", "corpus_bleu", "differing",
           "lengths", "memorization", "not_training_note", "read_set", "training_sha256"]
