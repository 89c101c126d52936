"""mkdocs hooks: serve the benchmark results (bench/results/*.json) with the site, at bench/results/, so the
benchmark pages link to the exact file each table came from and `mkdocs build --strict` fails on a link to
a result that does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(RESULTS.glob("*.json")):
        files.append(File.generated(config, f"bench/results/{path.name}", abs_src_path=str(path)))
    return files
