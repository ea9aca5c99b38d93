"""Prompts and JSON schemas of the LLM cluster-agent (docs/formulas.md#cluster-agent-score), written for this project.

Three kinds of call, each constrained to a JSON schema (structured outputs):
- criteria: J samples → 3–5 metadata attributes and 3–5 scoring metrics that tell samples apart;
- clustering: K numbered samples and the merged criteria → clusters of sample numbers, with reasons;
- verification: the proposed multi-sample clusters → valid/invalid for each.
Samples are cut to `sample_chars` characters so that a small judge's context holds K of them.
"""

from __future__ import annotations

from collections.abc import Sequence

Message = dict[str, str]

SYSTEM = ("You are a careful data analyst. You study datasets of reasoning problems and their solutions, "
          "and you judge which samples teach the same thing. You answer in JSON only.")

FALLBACK_CRITERIA = {
    "metadata": [("topic", "the subject matter or real-world setting of the problem"),
                 ("skill", "the main reasoning or calculation skill the problem needs"),
                 ("format", "the form of the question and of the expected answer")],
    "metrics": [("steps", "how many reasoning steps the solution takes"),
                ("difficulty", "how hard the problem is for a student"),
                ("novelty", "how unusual the problem is compared with textbook exercises")],
}
"""Criteria used when no criteria call returned a usable answer (reported as `criteria_source`)."""

_ITEM = {"type": "object", "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 40},
                                          "description": {"type": "string", "minLength": 1, "maxLength": 160}},
         "required": ["name", "description"], "additionalProperties": False}

CRITERIA_SCHEMA = {
    "type": "object",
    "properties": {"metadata": {"type": "array", "items": _ITEM, "minItems": 3, "maxItems": 5},
                   "metrics": {"type": "array", "items": _ITEM, "minItems": 3, "maxItems": 5}},
    "required": ["metadata", "metrics"], "additionalProperties": False,
}


def clusters_schema(k: int) -> dict:
    """Clusters of sample numbers 1..k, each with a short reason (the reason comes first: it is
    written before the model commits to the numbers)."""
    cluster = {"type": "object",
               "properties": {"reasoning": {"type": "string", "maxLength": 200},
                              "indices": {"type": "array", "minItems": 1, "maxItems": k,
                                          "items": {"type": "integer", "minimum": 1, "maximum": k}}},
               "required": ["reasoning", "indices"], "additionalProperties": False}
    return {"type": "object",
            "properties": {"clusters": {"type": "array", "items": cluster, "minItems": 1, "maxItems": k}},
            "required": ["clusters"], "additionalProperties": False}


def verification_schema(n_clusters: int) -> dict:
    """One boolean per cluster shown, in order, after a short reason."""
    return {"type": "object",
            "properties": {"reasoning": {"type": "string", "maxLength": 300},
                           "valid": {"type": "array", "items": {"type": "boolean"},
                                     "minItems": n_clusters, "maxItems": n_clusters}},
            "required": ["reasoning", "valid"], "additionalProperties": False}


def shorten(text: str, chars: int) -> str:
    """`text` with whitespace collapsed, cut to `chars` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[:max(chars - 1, 0)].rstrip() + "…"


def _numbered(samples: Sequence[str], chars: int, numbers: Sequence[int] | None = None) -> str:
    numbers = numbers or range(1, len(samples) + 1)
    return "\n\n".join(f"[Sample {i}]\n{shorten(text, chars)}" for i, text in zip(numbers, samples))


def _criteria_text(criteria: dict[str, list[tuple[str, str]]]) -> str:
    lines = ["Metadata attributes:"] + [f"- {name}: {about}" for name, about in criteria["metadata"]]
    lines += ["Scoring metrics:"] + [f"- {name}: {about}" for name, about in criteria["metrics"]]
    return "\n".join(lines)


def criteria_messages(samples: Sequence[str], chars: int) -> list[Message]:
    """Ask for metadata attributes and scoring metrics that describe how these samples differ."""
    text = (f"Here are {len(samples)} samples from a dataset.\n\n{_numbered(samples, chars)}\n\n"
            "Propose criteria for deciding whether two samples of this dataset teach the same thing.\n"
            "- metadata: 3 to 5 attributes that every sample has a value for (for example its topic or "
            "the kind of reasoning it needs).\n"
            "- metrics: 3 to 5 properties that can be scored on a scale (for example the number of "
            "reasoning steps).\n"
            "Give each a short name and a one-sentence description.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def clustering_messages(samples: Sequence[str], criteria: dict[str, list[tuple[str, str]]],
                        chars: int) -> list[Message]:
    """Ask for a partition of samples 1..K into clusters of samples that are alike under the criteria."""
    k = len(samples)
    text = (f"Criteria for comparing samples:\n{_criteria_text(criteria)}\n\n"
            f"Here are {k} samples, numbered 1 to {k}.\n\n{_numbered(samples, chars)}\n\n"
            "Group the samples into clusters: samples in one cluster must be alike under the criteria "
            "above. A sample that is unlike all the others forms a cluster of its own. Every number from "
            f"1 to {k} must appear in exactly one cluster. For each cluster give a one-sentence reason "
            "and the sample numbers.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def verification_messages(samples: Sequence[str], clusters: Sequence[Sequence[int]],
                          criteria: dict[str, list[tuple[str, str]]], chars: int) -> list[Message]:
    """Ask whether each proposed cluster (1-based sample numbers) really holds alike samples."""
    shown = "\n\n".join(
        f"Cluster {c}:\n" + _numbered([samples[i - 1] for i in members], chars, members)
        for c, members in enumerate(clusters, start=1))
    text = (f"Criteria for comparing samples:\n{_criteria_text(criteria)}\n\n"
            f"Someone grouped samples into the {len(clusters)} clusters below.\n\n{shown}\n\n"
            "Check each cluster. It is valid when all of its samples are alike under the criteria, and "
            "invalid when at least one sample does not belong with the others. After a short reason, "
            f"answer with {len(clusters)} booleans, one per cluster in the order shown (true = valid).")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
