"""Role stops (`role_stops`): roles whose first replies were all unusable, remembered across runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from autointerp.store.db import Connection, insert_rows


@dataclass(frozen=True)
class RoleStop:
    endpoint: str
    model: str
    role: str
    stopped: bool
    replies: int
    usable: int
    reason: str
    created_at: datetime | None = None


def add_role_stops(con: Connection, stops: list[RoleStop]) -> None:
    """Append role stops (or their clearing, `stopped=False`), inside the caller's transaction."""
    insert_rows(con, "role_stops", [{k: v for k, v in s.__dict__.items() if k != "created_at"} for s in stops])


def role_stops(con: Connection, endpoint: str, model: str) -> list[RoleStop]:
    """The roles of `model` at `endpoint` whose newest row says stopped."""
    rows = con.execute(
        "SELECT endpoint, model, role, stopped, replies, usable, reason, created_at FROM role_stops "
        "WHERE endpoint = ? AND model = ? "
        "QUALIFY row_number() OVER (PARTITION BY role ORDER BY created_at DESC, stopped) = 1 ORDER BY role",
        [endpoint, model]).fetchall()
    return [RoleStop(*r) for r in rows if r[3]]
