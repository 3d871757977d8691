"""Findings over time: each finding identity (`rule:subject`) lives through episodes.

An episode begins at the first evaluation where the rule's condition held (or earlier, when
the rule's own evidence knows the start better: the first failed request, the first sample
over the threshold), and ends at the first evaluation where it no longer held. While it lasts,
the finding carries the episode's `since`, whatever a rule's sliding window would say; once it
ends the finding is re-emitted for `resolved_for` seconds as info, with when it ended and how
long it lasted, and never at its old severity.

The sidecar feeds every evaluation through one `Lifecycle` (each collection cycle and each
`/diagnose` request), so episodes start and end within one collection interval of the truth.
Memory is bounded: an ended episode is remembered for the history window (a rule's evidence
reaches no further back), and at most `max_tracked` identities at once; ended ones are
forgotten first, oldest first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from agent.diagnose.model import SEVERITY_RANK, Finding

RESOLVED_FOR = 300.0  # seconds a resolved finding stays in the report (as info)
# Seconds an ended episode is remembered: a rule's evidence reaches back at most the history
# window (15 min by default), and a new episode must not be dated before the last one ended.
REMEMBER_FOR = 900.0
MAX_TRACKED = 512  # finding identities remembered at once


@dataclass
class Episode:
    id: str
    since: float  # when the condition began (this episode)
    floor: float  # the previous episode's end: this one cannot have begun before it
    last_held: float  # the last evaluation at which the condition held
    peak: str  # the worst severity shown while active
    finding: Finding  # as last shown while it held
    resolved_at: float = 0.0  # 0 while the condition holds

    @property
    def resolved(self) -> bool:
        return self.resolved_at > 0


class Lifecycle:
    def __init__(
        self,
        resolved_for: float = RESOLVED_FOR,
        max_tracked: int = MAX_TRACKED,
        remember_for: float = REMEMBER_FOR,
    ) -> None:
        self.resolved_for = resolved_for
        self.remember_for = max(remember_for, resolved_for)
        self.max_tracked = max_tracked
        self.episodes: dict[str, Episode] = {}

    def observe(
        self, findings: list[Finding], now: float, record: bool = True, window: float | None = None
    ) -> list[Finding]:
        """The findings of one evaluation with their episode's `since`, followed by the
        recently resolved ones (info). `record=False` reads the episodes without moving them
        (a report over a narrowed window, where a windowed finding's absence proves nothing);
        `window` limits resolved findings to those that ended inside it."""
        held: set[str] = set()
        for finding in findings:
            held.add(finding.id)
            episode = self.episodes.get(finding.id)
            if episode is None or episode.resolved:
                floor = episode.resolved_at if episode is not None else 0.0
                since = max(floor, min(finding.since, now))
                if not record:
                    finding.since = since
                    continue
                episode = Episode(finding.id, since, floor, now, finding.severity, finding)
                self.episodes[finding.id] = episode
            elif record:
                # A rule's evidence may reach further back than the first evaluation that saw
                # it (a failure before the threshold was crossed): the earliest wins, never
                # before the previous episode ended.
                episode.since = max(episode.floor, min(episode.since, finding.since))
            if record:
                episode.last_held = max(episode.last_held, now)
                episode.finding = finding
                if finding.active and SEVERITY_RANK[finding.severity] > SEVERITY_RANK[episode.peak]:
                    episode.peak = finding.severity
            finding.since = episode.since
        if record:
            for episode in self.episodes.values():
                if episode.id not in held and not episode.resolved:
                    episode.resolved_at = now
            self._forget(now)
        out = list(findings)
        out.extend(
            self._resolved(episode)
            for episode in self.episodes.values()
            if episode.id not in held and self._shown(episode, now, window)
        )
        return out

    def _shown(self, episode: Episode, now: float, window: float | None) -> bool:
        if not episode.resolved or now - episode.resolved_at > self.resolved_for:
            return False
        if window is not None and episode.resolved_at < now - window:
            return False
        # Already info while it lasted (a state, or a past event the pod had served after):
        # its end is the window moving on, not news.
        return episode.peak != "info" and episode.finding.active

    @staticmethod
    def _resolved(episode: Episode) -> Finding:
        finding = copy.copy(episode.finding)
        finding.severity = "info"
        finding.state = "resolved"
        finding.was = episode.peak
        finding.since = episode.since
        finding.resolved_at = episode.resolved_at
        # Causality is claimed only between findings that hold now.
        finding.explains = []
        finding.explained_by = []
        return finding

    def _forget(self, now: float) -> None:
        for key in [
            k for k, e in self.episodes.items() if e.resolved and now - e.resolved_at > self.remember_for
        ]:
            del self.episodes[key]
        excess = len(self.episodes) - self.max_tracked
        if excess > 0:
            # Resolved first (oldest end first), then what held longest ago.
            order = sorted(
                self.episodes.values(),
                key=lambda e: (not e.resolved, e.resolved_at if e.resolved else e.last_held),
            )
            for episode in order[:excess]:
                del self.episodes[episode.id]
