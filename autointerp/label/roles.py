"""Roles stopped for the rest of a label run when their first replies are all unusable.

A model that cannot do a role (the 135M judge answers no usable list of 0/1) would otherwise be asked
again, with its re-asks, for every feature: minutes each on a small local model, for no score. So the
first `first` replies of each role (after their re-asks) decide: none usable, and the role is not asked
again in this run; the one line saying so goes into the run's summary and into the error of every
score run it left unscored (`role_stopped`). A later run tries the role again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from autointerp.records import FailureCode

FIRST = 4  # replies: a few features' worth, so a model that can do the role at all is not stopped
UNUSABLE = (FailureCode.UNUSABLE_REPLY, FailureCode.UNUSABLE_SIMULATION)
SKIPPED = {"judge": "detection and fuzzing skipped for this run",
           "simulator": "simulation (so every score of its labels) skipped for this run"}


@dataclass
class RoleGate:
    """Counts each role's usable and unusable replies; `stopped(role)` is the line once it is stopped."""

    first: int = FIRST
    replies: Counter[str] = field(default_factory=Counter)
    usable: Counter[str] = field(default_factory=Counter)
    models: dict[str, str] = field(default_factory=dict)  # the stopped roles, with their model

    def record(self, role: str, model: str, outcome: str | None) -> None:
        """One reply of `role`: `outcome` None when usable, else its failure code (only unusable replies
        count against the role: a timeout says nothing about what the model can do)."""
        if outcome is not None and outcome not in UNUSABLE:
            return
        self.replies[role] += 1
        self.usable[role] += outcome is None
        if role not in self.models and self.usable[role] == 0 and self.replies[role] >= self.first:
            self.models[role] = model

    def stopped(self, role: str) -> str | None:
        """The line that says `role` is stopped and why (counting the replies in flight when it was), or None."""
        if role not in self.models:
            return None
        return (f"{role} {self.models[role]}: {self.usable[role]} of {self.replies[role]} replies usable; "
                f"{SKIPPED.get(role, 'its requests skipped for this run')}")

    def lines(self) -> list[str]:
        return [line for role in self.models if (line := self.stopped(role))]
