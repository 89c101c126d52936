"""Probe texts run on a subject: a model's feature (a neuron or SAE latent, read at its hook by the feature
reader) on any text the labelling agent's explainer writes. Texts are tokenized as collection tokenizes
the corpus (no special tokens, BOS in front when the dictionary was collected with one) and cut to the
dictionary's context length; the cut is returned so it can be recorded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from autointerp.models.reader import FeatureReader

Reading = tuple[list[int], list[float], int]  # token ids, the feature's activation on each, tokens cut off


def tokenize_probe(tokenizer: Any, text: str, ctx_len: int) -> tuple[list[int], int]:
    """`text`'s token ids, at most `ctx_len` of them, and how many were cut off the end."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[:ctx_len], max(0, len(ids) - ctx_len)


@dataclass
class ModelProbe:
    """One feature of a model (the reader's single feature) read on probe texts."""

    reader: FeatureReader
    tokenizer: Any
    ctx_len: int
    bos: int | None

    def __call__(self, text: str) -> Reading:
        ids, cut = tokenize_probe(self.tokenizer, text, self.ctx_len)
        if not ids:
            return [], [], cut
        inputs = torch.tensor([([self.bos] if self.bos is not None else []) + ids], dtype=torch.long)
        acts = self.reader(inputs.to(self.reader.model.cfg.device))[0, :, 0]
        if self.bos is not None:
            acts = acts[1:]
        return ids, [float(a) for a in acts.cpu()], cut
