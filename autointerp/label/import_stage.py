"""The import stage: labels from another tool's files become explanations of a dictionary's features, like
any other (explainer = the name given, prompt hash = the file's hash), so `score`, `behaviour`, the nulls,
`compare` and the report treat them as they treat ours.

Rows that cannot be labels (an unknown feature, an empty label, one the `Label` rules refuse, a row that does
not parse) are skipped and counted with their reason: no LLM was asked for them, so they are not failed
explanations. Importing the same file again finds its explanations done and adds nothing."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from autointerp import store
from autointerp.analysis import export
from autointerp.errors import AutointerpError, BadInput
from autointerp.label import imported as imports
from autointerp.records import Explanation, Label

HASH_PREFIX = "import:"
RESERVED = ("baseline:", "null:")  # our own explainers' names
N_EXAMPLES = 5


@dataclass
class ImportOutcome:
    dictionary_id: int
    explainer: str
    fmt: str
    prompt_hash: str
    files: int
    rows: int = 0
    imported: int = 0
    already: int = 0  # features this file's labels were imported for before
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> rows
    examples: list[str] = field(default_factory=list)  # the first few skipped rows, "where: reason"
    warnings: list[str] = field(default_factory=list)


def _label_problem(text: str | None) -> str | None:
    if not text:
        return "empty label"
    try:
        Label(label=text)
    except ValidationError as exc:
        return "label refused: " + exc.errors()[0]["msg"].removeprefix("Value error, ")
    return None


def _origin_problems(parsed: imports.Parsed, d: store.DictionaryRow) -> tuple[list[str], list[str]]:
    """(mismatches, warnings): does the file say its labels belong to another layer (a mismatch) or model (a
    warning) than the dictionary's? A file whose rows name several sources cannot be matched to one dictionary
    by index, so it is refused."""
    origins = parsed.origins
    if len(origins) > 1:
        raise BadInput(f"the {parsed.fmt} file(s) hold labels of {len(origins)} sources ({', '.join(sorted(origins))}): "
                       "pick one with --module NAME")
    if not origins:
        return [], []
    (origin,) = origins
    mismatches, warnings = [], []
    hook_layer = imports.layer_of(d.hook)
    if parsed.fmt == "neuronpedia":
        model_id, _, layer = origin.partition("/")
        try:
            ours = export.np_model_id(d.model)
        except AutointerpError:
            ours = None
        if ours is None:
            warnings.append(f"cannot tell whether Neuronpedia model '{model_id}' is this dictionary's model "
                            f"'{d.model}' (not one of the Neuronpedia models autointerp knows)")
        elif model_id != ours:
            warnings.append(f"the labels are for Neuronpedia model '{model_id}', this dictionary's model is "
                            f"'{ours}'")
        if d.kind == "neurons" and layer != str(hook_layer):
            mismatches.append(f"the labels are for Neuronpedia source '{layer}', this dictionary's neurons are at "
                              f"'{d.hook}'")
        elif d.kind != "neurons" and imports.layer_of(layer) != hook_layer:
            mismatches.append(f"the labels are for Neuronpedia source '{layer}', this dictionary's SAE is at "
                              f"'{d.hook}'")
    elif imports.layer_of(origin) != hook_layer:
        mismatches.append(f"the labels are for {origin}, this dictionary is at '{d.hook}'")
    return mismatches, warnings


def _new_explanations(parsed: imports.Parsed, out: ImportOutcome, known: set[int], done: set[int],
                      source: str) -> list[Explanation]:
    """The rows of `parsed` that become explanations; counts the others in `out` (already imported, skipped)."""
    seen: set[int] = set()
    new = []
    for r in parsed.rows:
        if r.feature is not None and r.feature in done and r.problem is None:
            if r.feature not in seen:
                out.already += 1
            seen.add(r.feature)
            continue
        problem: str | None
        if r.problem:
            reason = problem = r.problem
        elif r.feature not in known:
            reason, problem = "unknown feature", f"feature {r.feature} is not in dictionary {out.dictionary_id}"
        elif r.feature in seen:
            reason = problem = ("another label for this feature earlier in the file "
                                f"({imports.KEEP_FIRST[parsed.fmt]})")
        else:
            problem = _label_problem(r.label)
            reason = problem or ""
        if problem:
            out.skipped[reason] += 1
            if len(out.examples) < N_EXAMPLES:
                out.examples.append(f"{r.where}: {problem}")
            continue
        assert r.feature is not None
        seen.add(r.feature)
        new.append(Explanation(
            explanation_id=str(uuid.uuid4()), dictionary_id=out.dictionary_id, feature=r.feature, label=r.label,
            explainer=out.explainer, prompt_hash=out.prompt_hash, status="ok",
            config=json.dumps({"imported_from": source, "format": parsed.fmt, "sha256": parsed.sha256,
                               "row": r.where, "origin": r.origin or None}, sort_keys=True)))
    return new


def import_labels(db: str | Path, dictionary_id: int, path: str | Path, explainer: str, fmt: str = "auto",
                  module: str | None = None, force: bool = False) -> ImportOutcome:
    """Store the labels of `path` (a file or directory in one of imports.FORMATS, or 'auto'; `module`: only that
    source's) as explanations of `dictionary_id` by `explainer`. Labels of another layer than the dictionary's
    are refused unless `force`. Returns what was imported, what was there already and what was skipped why."""
    explainer = explainer.strip()
    if not explainer or explainer.startswith(RESERVED):
        raise BadInput(f"--explainer '{explainer}': give a name of your own (not empty, not starting with "
                       f"{' or '.join(RESERVED)})")
    parsed = imports.read(path, fmt, module)
    if not parsed.rows:
        raise BadInput(f"{path}: no labels in it (read as {parsed.fmt})")
    phash = HASH_PREFIX + parsed.sha256[:16]
    out = ImportOutcome(dictionary_id, explainer, parsed.fmt, phash, len(parsed.files), rows=len(parsed.rows))
    with store.open_store(db, wait_s=600) as con:
        d = store.get_dictionary(con, dictionary_id)
        if d.status != "complete":
            raise BadInput(f"dictionary {dictionary_id} is {d.status}; complete its collection first")
        mismatches, out.warnings = _origin_problems(parsed, d)
        if mismatches and not force:
            raise BadInput(f"{mismatches[0]}; import them into the dictionary of that layer, or pass --force")
        out.warnings = mismatches + out.warnings
        known = set(store.select_features(con, dictionary_id))
        done = store.explained_features(con, dictionary_id, explainer, phash)
        new = _new_explanations(parsed, out, known, done, str(Path(path).resolve()))
        if new:
            # One bundle: if another process imported this very file meanwhile, it is all done already.
            if store.write_bundles(con, [store.Bundle(explanations=new)]):
                out.imported = len(new)
            else:
                out.already += len(new)
    return out
