"""Sticky A/B assignment: hash (experiment salt, user id) into a bucket, arms own bucket ranges.

A user's bucket never changes (it depends only on the salt and the user id), so assignment is sticky across
requests, processes and restarts with no state to look up. Arm weights map to bucket *ranges* laid out so that
ramping never reshuffles:

    buckets 0 ........................................................ BUCKETS
            [ slot of treatment 1 ][ slot of treatment 2 ] ... | rest: control
             [t1 range)             [t2 range)

Each treatment arm owns a fixed slot (BUCKETS / number of treatments) and its range grows from the slot's start
as its weight grows. Raising a treatment's weight (1% -> 10% -> 50%) only moves users from control into that
treatment; lowering it (or stopping) only moves users back to control. A user in a treatment is never moved to
another treatment, and an arm's users stay in it as long as the arm exists. The price: one treatment's weight
is at most 1 / number of treatments.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BUCKETS = 10_000


def bucket(salt: str, user_id: int | str, buckets: int = BUCKETS) -> int:
    """Stable bucket in [0, buckets) for a user in an experiment (sha256, not Python's salted hash())."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % buckets


@dataclass(frozen=True)
class Arm:
    name: str
    model: str  # a registry reference: "alias:champion", "version:3"
    weight: float  # share of traffic, 0..1


@dataclass(frozen=True)
class Layout:
    """Bucket ranges per arm, from the arms' weights (the first arm is control)."""

    control: str
    ranges: dict[str, tuple[int, int]]  # treatment arm -> [start, end) buckets

    @classmethod
    def of(cls, arms: list[Arm], buckets: int = BUCKETS) -> Layout:
        if len(arms) < 2:
            raise ValueError("an experiment needs a control arm and at least one treatment arm")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique: {names}")
        if any(a.weight < 0 for a in arms):
            raise ValueError("arm weights must be >= 0")
        if abs(sum(a.weight for a in arms) - 1.0) > 1e-6:
            raise ValueError(f"arm weights must sum to 1, got {sum(a.weight for a in arms):.6f}")
        treatments = arms[1:]
        slot = buckets // len(treatments)
        ranges = {}
        for k, a in enumerate(treatments):
            width = round(a.weight * buckets)
            if width > slot:
                raise ValueError(
                    f"arm {a.name!r}: weight {a.weight:.4f} exceeds its slot 1/{len(treatments)}; with "
                    f"{len(treatments)} treatment arms each can take at most {slot / buckets:.4f} of traffic"
                )
            ranges[a.name] = (k * slot, k * slot + width)
        return cls(arms[0].name, ranges)

    def arm_of(self, b: int) -> str:
        for name, (lo, hi) in self.ranges.items():
            if lo <= b < hi:
                return name
        return self.control


def assign(salt: str, user_id: int | str, arms: list[Arm]) -> str:
    return Layout.of(arms).arm_of(bucket(salt, user_id))
