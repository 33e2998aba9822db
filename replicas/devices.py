"""Managing the roster from a device: removing a member (a lost laptop, an unused invite).

The rules live in ``eventlog.membership`` (who may remove whom, the cutoff, how concurrent
changes resolve) and ``Engine.remove_member`` (the new epoch key, wrapped for the remaining
members only); this module resolves what the user typed and says what happened.
"""

from __future__ import annotations

from typing import Any

from eventlog.errors import AmbiguousError, NotFoundError
from eventlog.membership import Member
from eventlog.store import hex_prefix_bounds
from replicas.vault import Replica


def resolve_member(replica: Replica, prefix: str) -> Member:
    """The one member (current or removed) whose hex id starts with ``prefix``."""
    low, high = hex_prefix_bounds(prefix, 32)
    found = [m for a, m in replica.log.fold.members.items() if low <= a <= high]
    if not found:
        raise NotFoundError(f"no member {prefix} (see `shoal devices`)")
    if len(found) > 1:
        raise AmbiguousError(f"member prefix {prefix} is ambiguous")
    return found[0]


def remove_device(replica: Replica, prefix: str) -> dict[str, Any]:
    """Remove the member ``prefix`` names; returns what the removal recorded."""
    member = resolve_member(replica, prefix)
    accepted = replica.engine.remove_member(member.author)
    removed = replica.log.fold.members[member.author]
    return {
        "removed": member.author.hex(),
        "role": member.role,
        "cutoff": removed.cutoff,
        "event": accepted.event.id.hex(),
        "epoch": replica.engine.keyring.current_epoch,
        "recipients": sorted(
            m.author.hex() for m in replica.log.roster.values() if m.author != member.author
        ),
    }
