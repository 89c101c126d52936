"""Roles stopped for the rest of a label run when their first replies are all unusable.

A model that cannot do a role (the 135M judge answers no usable list of 0/1) would otherwise be asked
again, with its re-asks, for every feature: minutes each on a small local model, for no score. So the
first `first` replies of each role (after their re-asks) decide: none usable, and the role is not asked
again in this run; the one line saying so goes into the run's summary and into the error of every
score run it left unscored (`role_stopped`). The stop is written to `role_stops` with the run's rows,
so a later run on the same database, endpoint and model does not ask the role either (and says why in
the same one line); `--retry-stopped-roles` asks it again."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from autointerp.records import FailureCode
from autointerp.store import RoleStop

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
    endpoint: str = ""  # where the roles were asked: what a stored stop is keyed by, with the model
    earlier: dict[str, RoleStop] = field(default_factory=dict)  # stopped by an earlier run: not asked
    retried: dict[str, RoleStop] = field(default_factory=dict)  # stopped earlier, asked again in this run
    saved: set[str] = field(default_factory=set)  # roles whose stop (or clearing) is written

    @classmethod
    def remembering(cls, endpoint: str, stops: list[RoleStop], retry: bool = False) -> RoleGate:
        """A gate that starts with the stops an earlier run recorded (asked again with `retry`)."""
        by_role = {s.role: s for s in stops}
        return cls(endpoint=endpoint, earlier={} if retry else by_role, retried=by_role if retry else {})

    def record(self, role: str, model: str, outcome: str | None) -> None:
        """One reply of `role`: `outcome` None when usable, else its failure code (only unusable replies
        count against the role: a timeout says nothing about what the model can do)."""
        if outcome is not None and outcome not in UNUSABLE or role in self.earlier:
            return
        self.replies[role] += 1
        self.usable[role] += outcome is None
        if role not in self.models and self.usable[role] == 0 and self.replies[role] >= self.first:
            self.models[role] = model

    def absorb(self, other: RoleGate) -> None:
        """Take in what another gate of this run found (a client process's, started from this one's memory)."""
        self.replies.update(other.replies)
        self.usable.update(other.usable)
        for role, model in other.models.items():
            self.models.setdefault(role, model)
        self.saved |= other.saved

    def stopped(self, role: str) -> str | None:
        """The line that says `role` is stopped and why (counting the replies in flight when it was), or None."""
        if (earlier := self.earlier.get(role)) is not None:
            when = f"{earlier.created_at:%Y-%m-%d %H:%M}, " if earlier.created_at else ""
            return (f"{earlier.reason} (stopped by an earlier run on this database, {when}"
                    "--retry-stopped-roles asks it again)")
        return self._line(role) if role in self.models else None

    def _line(self, role: str) -> str:
        return (f"{role} {self.models[role]}: {self.usable[role]} of {self.replies[role]} replies usable; "
                f"{SKIPPED.get(role, 'its requests skipped for this run')}")

    def lines(self) -> list[str]:
        return [line for role in [*self.earlier, *self.models] if (line := self.stopped(role))]

    def unsaved(self) -> list[RoleStop]:
        """What is to be written: roles stopped in this run, and retried roles that got a usable reply."""
        out = [RoleStop(self.endpoint, model, role, True, self.replies[role], self.usable[role],
                        self._line(role)) for role, model in self.models.items() if role not in self.saved]
        out += [RoleStop(self.endpoint, s.model, role, False, self.replies[role], self.usable[role],
                         f"{role} {s.model}: {self.usable[role]} of {self.replies[role]} replies usable on retry")
                for role, s in self.retried.items()
                if role not in self.saved and role not in self.models and self.usable[role] > 0]
        return out

    def mark_saved(self, stops: list[RoleStop]) -> None:
        self.saved |= {s.role for s in stops}
