"""The table: each figure beside its ceiling, the ratio, the target and PASS/MISS."""

from __future__ import annotations

import sys
from dataclasses import dataclass


def say(message: str) -> None:
    """Progress on stderr, so the table on stdout stays clean."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Row:
    """One measured figure.

    ``ratio_target`` is judged on figure/ceiling (at least it, or at most it when
    ``lower_is_better``); ``target`` on the figure itself. A row with neither is
    information only.
    """

    what: str
    figure: float
    ceiling: float | None = None
    ratio_target: float | None = None
    target: float | None = None
    lower_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        """figure / ceiling, when there is a ceiling."""
        if self.ceiling is None or not self.ceiling:
            return None
        return self.figure / self.ceiling

    @property
    def verdict(self) -> str:
        """PASS, MISS, or '' for an information-only row."""
        checks = []
        if self.ratio_target is not None and self.ratio is not None:
            checks.append(
                self.ratio <= self.ratio_target
                if self.lower_is_better
                else self.ratio >= self.ratio_target
            )
        if self.target is not None:
            checks.append(
                self.figure <= self.target if self.lower_is_better else self.figure >= self.target
            )
        if not checks:
            return ""
        return "PASS" if all(checks) else "MISS"

    def goal(self) -> str:
        """The target, in words."""
        sign = "<=" if self.lower_is_better else ">="
        parts = []
        if self.ratio_target is not None:
            parts.append(f"ratio {sign} {self.ratio_target:g}")
        if self.target is not None:
            parts.append(f"{sign} {self.target:g}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready row."""
        return {
            "what": self.what,
            "figure": round(self.figure, 3),
            "ceiling": None if self.ceiling is None else round(self.ceiling, 3),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": self.goal(),
            "verdict": self.verdict,
        }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def render_table(results: dict) -> str:
    """The results document as a Markdown table with a header of run facts."""
    gunicorn = results["gunicorn"]
    lines = [
        f"plan {results['plan']}, {results['cores']} cores, load {results['load_before']} before"
        f" / {results['load_after']} after, gunicorn {gunicorn['workers']} workers x "
        f"{gunicorn['threads']} threads ({gunicorn['worker_class']})",
        "",
        "| what | figure | ceiling | ratio | target | |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in results["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"| {row['what']} | {_number(row['figure'])} | {_number(row['ceiling'])} | {ratio} "
            f"| {row['target'] or '-'} | {row['verdict']} |"
        )
    return "\n".join(lines)
