"""What a builder leaves behind: the output file, its manifest beside it, and the numbers of the
build. Shared by the Alpaca and chat builders (`alpaca/build_stream.py`, `chat/build.py`) and by
`pipeline.py`, which hands a source to one of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.data.alpaca.build import BuildRule
from alpaca_plw.data.stats import DatasetStats


def manifest_path(out: Path) -> Path:
    """`short.json` -> `short.manifest.json` (the suffix replaced). An output without a file name
    (`-o .`, `-o ..`, `-o /`, or `-o ""`, which reads as `.`) is refused (exit 3)."""
    if not Path(out).name or Path(out).name == "..":
        from alpaca_plw.errors import OutputError

        raise OutputError(f"-o {str(out) or repr('')}: names a folder, not a file; give a file "
                          "name such as out.json")
    return out.with_suffix(".manifest.json")


def default_output(source_name: str, rule: BuildRule, fmt: str) -> Path:
    stem = Path(source_name).stem if "/" not in source_name else source_name.replace("/", "_")
    stem = stem.split(":")[0]
    return Path(f"{stem}-{rule.name}.{fmt}")


def output_format(out: Path | None, fmt: str | None) -> str:
    from alpaca_plw.data.outputs.atomic import RECORD_FORMATS
    from alpaca_plw.errors import ConfigError

    implied = out.suffix.lower().lstrip(".") if out is not None else ""
    implied = implied if implied in RECORD_FORMATS else None
    if fmt is None:
        return implied or "json"
    if fmt not in RECORD_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(RECORD_FORMATS)}, got {fmt!r}")
    if implied and implied != fmt:
        raise ConfigError(f"--format {fmt} contradicts the output name {out.name}; change one")
    return fmt


@dataclass
class Built:
    out: Path
    manifest: Path
    stats: DatasetStats
    counts: dict[str, int]
    summary: dict[str, object]
