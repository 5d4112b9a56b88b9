"""The conflict resolver: proposals that contradict each other become one decision, explained.

The recommendation rules propose independently (``tuner.suggest.recommendations``); some
proposals cannot both be applied. ``resolve`` applies the ``RESOLUTIONS`` table in order to
the proposals, keyed by ``Rule``, and returns the recommendations left, in proposal order,
with one sentence per conflict saying how it was settled:

* raising ``--max-num-seqs`` while the server preempted at all would add preemptions: dropped;
* ``--gpu-memory-utilization`` up (cache-bound with free memory) and down (restarts or low
  free memory): stability wins, down;
* ``--max-num-batched-tokens`` up (TTFT) and down (ITL): the larger breach wins;
* ``--max-num-seqs`` up and down: down (a full cache outweighs a queue at other times);
* ``--max-num-seqs`` down with ``--gpu-memory-utilization`` up: both kept, with the order to
  apply them;
* a per-batch-size speculative schedule and one ``num_speculative_tokens`` change (or turning
  speculation off): the schedule wins, it keeps speculation where it is accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner.suggest.recommendations import Rule
from tuner.suggest.records import Recommendation
from tuner.suggest.view import WindowView

Proposals = list[tuple[Rule, Recommendation]]


@dataclass(frozen=True)
class Resolution:
    recommendations: tuple[Recommendation, ...]
    conflicts: tuple[str, ...]


def _has(proposals: Proposals, rule: Rule) -> bool:
    return any(r is rule for r, _ in proposals)


def _drop(proposals: Proposals, rule: Rule) -> Proposals:
    return [(r, rec) for r, rec in proposals if r is not rule]


def seqs_up_while_preempting(v: WindowView, proposals: Proposals
                             ) -> tuple[Proposals, str | None]:
    if not (_has(proposals, Rule.SEQS_UP) and v.preempting.any()):
        return proposals, None
    return _drop(proposals, Rule.SEQS_UP), (
        "--max-num-seqs: requests queued with KV headroom at times, but the server also "
        "preempted; raising max-num-seqs would add preemptions, so it is not recommended")


def gmu_up_against_down(v: WindowView, proposals: Proposals) -> tuple[Proposals, str | None]:
    if not (_has(proposals, Rule.GMU_UP) and _has(proposals, Rule.GMU_DOWN)):
        return proposals, None
    return _drop(proposals, Rule.GMU_UP), (
        "--gpu-memory-utilization: raising it (cache-bound with free memory) conflicts with "
        "lowering it (restarts or low free memory); stability wins, so the recommendation is "
        "down")


def mbt_up_against_down(v: WindowView, proposals: Proposals) -> tuple[Proposals, str | None]:
    """The larger breach wins; the winner takes the place of the down proposal."""
    if not (_has(proposals, Rule.MBT_UP) and _has(proposals, Rule.MBT_DOWN)):
        return proposals, None
    up_wins = float(v.ttft_breach.sum()) > float(v.itl_breach.sum())
    up = next(rec for r, rec in proposals if r is Rule.MBT_UP)
    kept = [(r, up if up_wins and r is Rule.MBT_DOWN else rec)
            for r, rec in _drop(proposals, Rule.MBT_UP)]
    winner = "up" if up_wins else "down"
    return kept, (
        "--max-num-batched-tokens: TTFT wants it up, ITL wants it down; the larger breach "
        f"({'TTFT' if up_wins else 'ITL'}) wins, so the recommendation is {winner}")


def seqs_up_against_down(v: WindowView, proposals: Proposals) -> tuple[Proposals, str | None]:
    """Lowering max-num-seqs beats raising it (not reported as a conflict)."""
    if _has(proposals, Rule.SEQS_UP) and _has(proposals, Rule.SEQS_DOWN):
        return _drop(proposals, Rule.SEQS_UP), None
    return proposals, None


def seqs_down_with_gmu_up(v: WindowView, proposals: Proposals) -> tuple[Proposals, str | None]:
    if not (_has(proposals, Rule.GMU_UP) and _has(proposals, Rule.SEQS_DOWN)):
        return proposals, None
    return proposals, (
        "--max-num-seqs down and --gpu-memory-utilization up both treat the full KV cache; "
        "apply the memory change first (it keeps throughput), then lower max-num-seqs if "
        "preemptions continue")


def spec_schedule_over_spec(v: WindowView, proposals: Proposals
                            ) -> tuple[Proposals, str | None]:
    if not (_has(proposals, Rule.SPEC_SCHEDULE) and _has(proposals, Rule.SPEC)):
        return proposals, None
    return _drop(proposals, Rule.SPEC), (
        "--speculative-config: one num_speculative_tokens for every batch size (or none) "
        "conflicts with a per-batch-size schedule; acceptance depends on the batch size, so "
        "the schedule is recommended")


Resolver = Callable[[WindowView, Proposals], tuple[Proposals, str | None]]

RESOLUTIONS: tuple[Resolver, ...] = (
    seqs_up_while_preempting,
    gmu_up_against_down,
    mbt_up_against_down,
    seqs_up_against_down,
    seqs_down_with_gmu_up,
    spec_schedule_over_spec,
)
"""The conflict rules, applied in this order (the order of the report's ``conflicts``)."""


def resolve(v: WindowView, proposals: Sequence[tuple[Rule, Recommendation]]) -> Resolution:
    """Settle contradicting proposals; the recommendations left and how each was settled."""
    left: Proposals = list(proposals)
    conflicts: list[str] = []
    for rule in RESOLUTIONS:
        left, note = rule(v, left)
        if note is not None:
            conflicts.append(note)
    return Resolution(tuple(rec for _, rec in left), tuple(conflicts))
