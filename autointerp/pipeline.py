"""`run` (collect, then label, then behaviour) and `control` (the same on a random-init copy of a
trained dictionary's model, over the same tokens with the same settings). With `--batch-api` the label
step is the Batch API path (`batch.batch_stage`), the same as `autointerp label --batch-api`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autointerp import store
from autointerp.behaviour.stage import BehaviourOutcome, behaviour_stage
from autointerp.collect.stage import CollectOutcome, collect_stage
from autointerp.config import BehaviourConfig, CollectConfig, LabelConfig, LLMConfig
from autointerp.errors import BadInput
from autointerp.label.batch import batch_stage, require_endpoint
from autointerp.label.stage import Progress, label_stage, open_llm
from autointerp.records import ProgressFn


@dataclass(frozen=True)
class Selection:
    """Which features of a dictionary to label: a range and/or a SQL condition on `features`."""

    features: tuple[int, int] | None = None
    where: str | None = None
    option: str = "--where"  # the option the condition came from, for messages


@dataclass
class RunOutcome:
    collect: CollectOutcome
    label: Progress | None
    behaviour: BehaviourOutcome | None
    collect_seed: int = 0


def select(db: str | Path, dictionary_id: int, selection: Selection) -> list[int]:
    with store.open_store(db, read_only=True) as con:
        features = store.select_features(con, dictionary_id, selection.where, selection.features, selection.option)
    if not features:
        raise BadInput("no features selected")
    return features


def label_and_behaviour(db: str | Path, dictionary_id: int, selection: Selection, label_cfg: LabelConfig,
                        llm_cfg: LLMConfig, behaviour_cfg: BehaviourConfig | None, concurrency: int | None = None,
                        on_progress: ProgressFn | None = None) -> tuple[Progress, BehaviourOutcome | None]:
    features = select(db, dictionary_id, selection)
    if llm_cfg.batch_api:
        require_endpoint(llm_cfg)
    with open_llm(llm_cfg) as session:
        if llm_cfg.batch_api:
            progress = batch_stage(db, dictionary_id, features, label_cfg, llm_cfg, session, on_progress=on_progress)
        else:
            progress = label_stage(db, dictionary_id, features, label_cfg, session,
                                   concurrency=concurrency or llm_cfg.concurrency, on_progress=on_progress)
    outcome = None
    if behaviour_cfg is not None and progress.stopped is None:
        outcome = behaviour_stage(db, dictionary_id, behaviour_cfg, features, on_progress=on_progress)
    return progress, outcome


def run_stage(db: str | Path, collect_cfg: CollectConfig, selection: Selection, label_cfg: LabelConfig,
              llm_cfg: LLMConfig, behaviour_cfg: BehaviourConfig | None,
              on_progress: ProgressFn | None = None) -> RunOutcome:
    """Collect, explain and score, then behaviour scores (None: skipped). Each step resumes where it stopped."""
    # Everything checkable is checked before the collection, which commits a dictionary.
    if selection.where is not None:
        store.check_where(selection.where, selection.option)
    if llm_cfg.batch_api:
        require_endpoint(llm_cfg)
    collected = collect_stage(db, collect_cfg, on_progress)
    progress, outcome = label_and_behaviour(db, collected.dictionary_id, selection, label_cfg, llm_cfg,
                                            behaviour_cfg, on_progress=on_progress)
    return RunOutcome(collected, progress, outcome, collect_cfg.seed)


def control_config(db: str | Path, like_id: int, seed: int | None = None, scheme: str = "init",
                   sae: str | None = None) -> CollectConfig:
    """The collect settings of a random-init control of dictionary `like_id`: the same model, hook, tokens
    and sampling, with weights from the initialisation `scheme` (seeded)."""
    with store.open_store(db, read_only=True) as con:
        d = store.get_dictionary(con, like_id)
    if d.random_init:
        raise BadInput(f"dictionary {like_id} is itself a random-init control")
    if d.kind == "sae" and not sae:
        raise BadInput(
            f"dictionary {like_id} holds SAE latents; an SAE trained on the trained model means nothing on a "
            "random one. Pass --sae DIR with an SAE trained on the random-init model (same seed), or run a "
            "neuron control with `autointerp collect --random-init --hook HOOK` on the same hook")
    fields = set(CollectConfig.model_fields)
    settings = {k: v for k, v in d.config.items() if k in fields}
    settings.update(random_init=True, seed=d.seed if seed is None else seed, sae=sae if d.kind == "sae" else None)
    settings["init_scheme"] = scheme
    if settings.get("features") is not None:
        settings["features"] = tuple(settings["features"])
    return CollectConfig(**settings)


def control_stage(db: str | Path, like_id: int, selection: Selection, label_cfg: LabelConfig, llm_cfg: LLMConfig,
                  behaviour_cfg: BehaviourConfig, seed: int | None = None, scheme: str = "init",
                  sae: str | None = None, on_progress: ProgressFn | None = None) -> RunOutcome:
    """A random-init control of dictionary `like_id`, collected, labelled and behaviour-scored like it; the
    collection runs on the behaviour's device (the device is not part of a collection's identity)."""
    collect_cfg = control_config(db, like_id, seed, scheme, sae).model_copy(update={"device": behaviour_cfg.device})
    return run_stage(db, collect_cfg, selection, label_cfg, llm_cfg, behaviour_cfg, on_progress)
