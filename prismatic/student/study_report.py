"""The files of a study's report folder, beside its journal (docs/study.md#the-report): `study.json` (the report),
`study.md` (its tables) and `scatter-<set>.png` (every metric against the gain over the format-only student,
one point per subset, the bar ± its sd over seeds, one colour per family)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

from prismatic.storage.atomic import write_atomically
from prismatic.student.ladder import METRICS, MORE_DIVERSE_IS_LOWER


def _number(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _rho(entry: dict) -> str:
    low, high = entry["ci"]
    if entry["rho"] is None:
        return "—"
    return f"{entry['rho']:+.2f} [{_number(low, 2, True)}, {_number(high, 2, True)}]"


def scatter_name(set_name: str) -> str:
    """`scatter-<set>.png`, the set's name reduced to letters, digits, `-`, `_` and `.`."""
    return f"scatter-{re.sub(r'[^A-Za-z0-9_.-]+', '_', set_name)}.png"


def markdown(report: dict, set_names: Sequence[str]) -> str:
    """The report's tables: ρ per metric and set (all subsets, then the partial view), the spreads, the
    format-only student, the mean gain per family, every subset, the compute."""
    lines = [f"# Study {report['fingerprint']}", "",
             f"{report['subsets']} of {report['planned_subsets']} subsets, {report['runs']} of "
             f"{report['planned_runs']} training runs ({report['seeds']} seeds a subset). Settings: "
             f"`{json.dumps(report['settings']['study'])}`; student `{json.dumps(report['settings']['student'])}`.",
             "", "Spearman ρ of each metric (signed: more diverse is higher) with the gain, 95% bootstrap interval:",
             ""]
    for title, view in (("all subsets", report["sets"]),
                        (f"{report['partial']['subsets']} subsets with ≥ {report['partial']['min_distinct']} "
                         "distinct problems", report["partial"]["sets"])):
        lines += [f"| metric ({title}) | " + " | ".join(set_names) + " |", "|---" * (len(set_names) + 1) + "|"]
        lines += [f"| {metric}{' (−)' if metric in MORE_DIVERSE_IS_LOWER else ''} | "
                  + " | ".join(_rho(view[name][metric]) for name in set_names) + " |" for metric in METRICS]
        lines.append("")
    lines += ["| set | base NLL | format-only gain | seed sd | seed sd of a mean | subset sd | subset sd (partial) |",
              "|---|---|---|---|---|---|---|"]
    for name in set_names:
        spread, fmt = report["spread"][name], report["format_only"][name]
        lines.append(f"| {name} | {_number(fmt['base_nll'])} | {_number(fmt['format_gain'], 3, True)} | "
                     f"{_number(spread['seed'])} | {_number(spread['seed_of_mean'])} | {_number(spread['subsets'])} | "
                     f"{_number(spread['subsets_partial'])} |")
    lines += ["", "| subset | distinct | G-Vendi | emb. Vendi | "
              + " | ".join(f"{name} gain (± seed sd) | over format-only" for name in set_names) + " | train s |",
              "|---" * (5 + 2 * len(set_names)) + "|"]
    for row in report["rows"]:
        over = row["gain_over_format"] or {}
        cells = " | ".join(f"{_number(row['gain'][name], 3, True)} ± {_number(row['gain_sd'][name])} | "
                           f"{_number(over.get(name), 3, True)}" for name in set_names)
        diversity = row["diversity"]
        lines.append(f"| {row['name']} | {diversity['distinct_problems']:.0f} | {diversity['gvendi']:.2f} | "
                     f"{diversity['embedding_vendi']:.2f} | {cells} | {row['train_s']:.0f} |")
    compute = report["compute"]
    lines += ["", f"Compute: median {_number(compute['train_s_median'], 0)} s of training and "
              f"{_number(compute['eval_s_median'], 0)} s of evaluation a run, {compute['run_s_total']:.0f} s of "
              f"runs in all, on {', '.join(compute['devices']) or 'no device yet'}.", ""]
    return "\n".join(lines)


def scatter(report: dict, set_name: str) -> bytes:
    """PNG of every metric against gain_over_format (gain where the format-only subset is unfinished) on one set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    over = all(row["gain_over_format"] for row in rows)
    families = list(dict.fromkeys(row["family"] for row in rows))
    colours = dict(zip(families, plt.cm.tab10.colors))
    figure, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for axis, metric in zip(axes.flat, METRICS):
        for family in families:
            chosen = [row for row in rows if row["family"] == family]
            gains = [(row["gain_over_format"] if over else row["gain"])[set_name] for row in chosen]
            axis.errorbar([row["diversity"][metric] for row in chosen], gains,
                          yerr=[row["gain_sd"][set_name] or 0.0 for row in chosen], fmt="o", ms=5, capsize=2,
                          color=colours[family], label=family)
        entry = report["sets"][set_name][metric]
        axis.set_title(f"{metric}: ρ {_rho(entry)}", fontsize=9)
        axis.set_xlabel(metric + (" (lower: more diverse)" if metric in MORE_DIVERSE_IS_LOWER else ""))
        axis.set_ylabel(f"{set_name} gain{' over format-only' if over else ''} (nats/token)", fontsize=8)
    axes.flat[-1].axis("off")
    if rows:
        axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"Diversity of a training subset vs its students' gain on {set_name} "
                    f"({report['subsets']} subsets × {report['seeds']} seeds; bars: sd over seeds)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_report(out: Path, report: dict, set_names: Sequence[str]) -> list[Path]:
    """Write study.json, study.md and one scatter per set into `out` (each replaced atomically)."""
    written = [write_atomically(out / "study.json", (json.dumps(report, indent=1) + "\n").encode()),
               write_atomically(out / "study.md", markdown(report, set_names).encode())]
    written += [write_atomically(out / scatter_name(name), scatter(report, name)) for name in set_names]
    return written
