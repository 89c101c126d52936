"""Labels made by other tools, read from the files those tools write (no SQL here: the import stage in
`label/import_stage.py` checks the rows against a dictionary and stores them).

Formats, each transcribed from the tool's own code:
- `neuronpedia`: a Neuronpedia dataset's explanations, `<modelId>/<source>/explanations/batch-N.jsonl.gz`, one
  `Explanation` row per line as utils/neuronpedia-utils/neuronpedia_utils/export-data.py (hijohnnylin/neuronpedia,
  read at commit 1a80fe9b) writes them: `id, modelId, layer, index, authorId, description, embedding, typeName,
  explanationModelName, umap_*` (ours, `export --format neuronpedia-dataset`, writes the same keys that matter).
  `index` (a string) is the feature, `description` the label.
- `openai`: OpenAI's neuron-explainer explanation files, `<layer>/<neuron>.jsonl`, one `NeuronSimulationResults`
  per line (neuron_explainer/explanations/explanations.py, openai/automated-interpretability at commit
  12fc736a): `{"neuron_id": {"layer_index", "neuron_index"}, "scored_explanations": [{"explanation",
  "scored_simulation"}]}`, each object also carrying its `dataclass_name` (fast_dataclasses). The first scored
  explanation is the label (their files list them best score first).
- `delphi`: Delphi's explanations directory, one `<module>_latent<N>.txt` per latent holding the explanation as a
  JSON string (`explainer_postprocess` in delphi/__main__.py, the file name `Latent.__repr__` in
  delphi/latents/latents.py; EleutherAI/delphi at commit ba6f8448).
- `table`: a CSV or Parquet file with columns `feature` and `label`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp.errors import BadInput

FORMATS = ("neuronpedia", "openai", "delphi", "table")
_NP_BATCH = re.compile(r"^batch-(\d+)\.jsonl(\.gz)?$")
_DELPHI_FILE = re.compile(r"^(?P<module>.+)_latent(?P<latent>\d+)\.txt$")


@dataclass(frozen=True)
class Row:
    """One label as the file gives it. `problem` says why it cannot be read (then feature/label may be None)."""

    where: str  # file:line, or the file name, for messages
    feature: int | None
    label: str | None
    origin: str = ""  # the model / layer / module the file says the feature belongs to
    problem: str | None = None
    file: Path | None = None  # the file the row came from


@dataclass(frozen=True)
class Parsed:
    fmt: str
    files: list[Path]
    sha256: str  # of the files' names and bytes: the same input, the same hash
    rows: list[Row]

    @property
    def origins(self) -> set[str]:
        return {r.origin for r in self.rows if r.origin}


# Which label a feature keeps when a file gives several: always the first, which means something else per format.
KEEP_FIRST = {
    "openai": "the first is kept: OpenAI's files list a neuron's explanations best score first",
    "neuronpedia": "the first is kept: Neuronpedia's batches are in feature order, not ranked by quality",
    "delphi": "the first is kept, in file-name order",
    "table": "the first is kept, in the file's row order",
}


# ---------------------------------------------------------------- detection and hashing


def _files(path: Path, pattern: Callable[[Path], bool]) -> list[Path]:
    return sorted((p for p in path.rglob("*") if p.is_file() and pattern(p)), key=_natural)


def _natural(p: Path) -> tuple[Any, ...]:
    """batch-2 before batch-10, neuron 2 before neuron 10."""
    return tuple(int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.as_posix()))


def _first_json(path: Path) -> Any:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                return json.loads(line)
    return None


def detect(path: Path) -> str:
    """The format of a file or directory, from names and, for JSON lines, the first record's keys."""
    if path.is_dir():
        if any(_DELPHI_FILE.match(p.name) for p in path.rglob("*.txt")):
            return "delphi"
        if any(_NP_BATCH.match(p.name) and p.parent.name == "explanations" for p in path.rglob("batch-*")):
            return "neuronpedia"
        if any(p.parent.name.isdigit() and p.stem.isdigit() for p in path.rglob("*.jsonl")):
            return "openai"
        raise BadInput(f"{path}: no Neuronpedia batch-N.jsonl.gz, OpenAI <layer>/<neuron>.jsonl or Delphi "
                       "<module>_latent<N>.txt files in it; pass --format")
    name = path.name.lower()
    if name.endswith((".csv", ".parquet")):
        return "table"
    if _DELPHI_FILE.match(path.name):
        return "delphi"
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        try:
            first = _first_json(path)
        except (ValueError, OSError) as exc:
            raise BadInput(f"{path}: not JSON lines ({exc}); pass --format") from None
        if isinstance(first, dict) and "neuron_id" in first and "scored_explanations" in first:
            return "openai"
        if isinstance(first, dict) and "index" in first and "description" in first:
            return "neuronpedia"
    raise BadInput(f"{path}: cannot tell its format; pass --format ({', '.join(FORMATS)})")


def files_hash(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(_name(root, f).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


# ---------------------------------------------------------------- readers


def _name(root: Path, f: Path) -> str:
    """A file as messages name it: its path relative to the directory given, or its name if a file was given."""
    return f.name if f == root else f.relative_to(root).as_posix()


def _json_lines(path: Path, name: str) -> Iterator[tuple[str, Any, str | None]]:
    """(where, record, problem) per non-empty line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield f"{name}:{n}", json.loads(line), None
            except ValueError as exc:
                yield f"{name}:{n}", None, f"not JSON ({exc})"


def _int(value: Any) -> int | None:
    """A feature index: an int, or a string of digits (Neuronpedia's `index` is a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) else None


def read_neuronpedia(path: Path) -> tuple[list[Path], list[Row]]:
    # A dataset directory also holds features/ and activations/ batches: only explanations/ holds labels.
    files = (_files(path, lambda p: bool(_NP_BATCH.match(p.name)) and p.parent.name == "explanations")
             if path.is_dir() else [path])
    rows = []
    for f in files:
        for where, rec, problem in _json_lines(f, _name(path, f)):
            if problem or not isinstance(rec, dict):
                rows.append(Row(where, None, None, problem=problem or "not a JSON object", file=f))
                continue
            feature, label = _int(rec.get("index")), _text(rec.get("description"))
            origin = f"{rec.get('modelId')}/{rec.get('layer')}"
            rows.append(Row(where, feature, label, origin,
                            problem="no feature index ('index')" if feature is None else
                            None if "description" in rec else "no label ('description')", file=f))
    return files, rows


def read_openai(path: Path) -> tuple[list[Path], list[Row]]:
    files = (_files(path, lambda p: p.suffix == ".jsonl" and p.stem.isdigit() and p.parent.name.isdigit())
             if path.is_dir() else [path])
    rows = []
    for f in files:
        for where, rec, problem in _json_lines(f, _name(path, f)):
            nid = rec.get("neuron_id") if isinstance(rec, dict) else None
            if problem or not isinstance(nid, dict):
                rows.append(Row(where, None, None, problem=problem or "no neuron_id", file=f))
                continue
            feature = _int(nid.get("neuron_index"))
            origin = f"layer {nid.get('layer_index')}"
            scored = rec.get("scored_explanations")
            if feature is None:
                rows.append(Row(where, None, None, origin, problem="no neuron_index", file=f))
            elif not isinstance(scored, list) or not scored or not isinstance(scored[0], dict):
                rows.append(Row(where, feature, None, origin, problem="no scored_explanations", file=f))
            else:
                # The first is the label; any others are reported as not imported (one label per feature).
                for i, s in enumerate(scored):
                    text = _text(s.get("explanation")) if isinstance(s, dict) else None
                    rows.append(Row(where if i == 0 else f"{where} (explanation {i + 1})", feature, text, origin,
                                    problem=None if i == 0 else "another explanation of this neuron earlier in the "
                                                                f"file ({KEEP_FIRST['openai']})", file=f))
    return files, rows


def read_delphi(path: Path) -> tuple[list[Path], list[Row]]:
    files = _files(path, lambda p: p.suffix == ".txt") if path.is_dir() else [path]
    rows = []
    for f in files:
        m, where = _DELPHI_FILE.match(f.name), _name(path, f)
        if m is None:
            rows.append(Row(where, None, None, problem="not a <module>_latent<N>.txt file name", file=f))
            continue
        try:
            value = json.loads(f.read_bytes())
        except ValueError as exc:
            rows.append(Row(where, int(m["latent"]), None, m["module"], problem=f"not a JSON string ({exc})",
                            file=f))
            continue
        rows.append(Row(where, int(m["latent"]), _text(value), m["module"],
                        problem=None if isinstance(value, str) else "not a JSON string", file=f))
    return files, rows


def read_table(path: Path) -> tuple[list[Path], list[Row]]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.name.lower().endswith(".parquet"):
            table = pq.read_table(path)
        else:
            # every column as text, so one bad cell is one bad row, not a failed file
            names = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)).column_names
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"{path}: cannot read it as {'Parquet' if path.suffix == '.parquet' else 'CSV'} ({exc})") from None
    missing = {"feature", "label"} - set(table.column_names)
    if missing:
        raise BadInput(f"{path}: needs columns feature and label (missing {', '.join(sorted(missing))}; "
                       f"found {', '.join(table.column_names)})")
    first = 2 if path.suffix != ".parquet" else 1  # a CSV's first data row is line 2
    rows = []
    for i, (f, label) in enumerate(zip(table.column("feature").to_pylist(), table.column("label").to_pylist(),
                                       strict=True)):
        feature = _int(f)
        rows.append(Row(f"{path.name}:{i + first}", feature, _text(label),
                        problem=None if feature is not None else f"feature {f!r} is not a non-negative integer",
                        file=path))
    return [path], rows


READERS: dict[str, Callable[[Path], tuple[list[Path], list[Row]]]] = {
    "neuronpedia": read_neuronpedia, "openai": read_openai, "delphi": read_delphi, "table": read_table}


def read(path: str | Path, fmt: str = "auto", module: str | None = None) -> Parsed:
    """Every row of a labels file (or directory) in one of FORMATS; 'auto' detects it. `module` keeps the rows
    of one source (a Delphi module, 'layer N' of OpenAI's, MODEL/SOURCE of Neuronpedia's) and their files."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file or directory")
    fmt = detect(p) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise BadInput(f"unknown format '{fmt}'; use one of: auto, {', '.join(FORMATS)}")
    try:
        files, rows = READERS[fmt](p)
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise BadInput(f"{p}: cannot read it as {fmt} ({exc})") from None
    if not files:
        raise BadInput(f"{p}: no {fmt} label files in it")
    nul = next((r for r in rows if r.label is not None and "\x00" in r.label), None)
    if nul is not None:  # no label holds a NUL byte: it is a damaged or hostile file, refused whole
        raise BadInput(f"{nul.where}: the label holds a NUL byte; nothing was imported")
    if module is not None:
        found = sorted({r.origin for r in rows if r.origin})
        rows = [r for r in rows if r.origin == module]
        if not rows:
            raise BadInput(f"--module {module}: no labels of it in {p}; the {fmt} files hold "
                           + (", ".join(found) if found else "no module names"))
        kept = {r.file for r in rows}
        files = [f for f in files if f in kept]
    return Parsed(fmt, files, files_hash(p, files), rows)


def layer_of(name: str) -> int | None:
    """The first layer number in a hook, module or source name (blocks.6.mlp.hook_post, layers.6.mlp, 6-res-jb)."""
    m = re.search(r"(?:^|[._/ -])(\d+)(?:$|[._/ -])", name)
    return int(m.group(1)) if m else None
