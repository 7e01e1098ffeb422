"""The evaluator's held-out sets, read from a build: rows whose `meta.split` is "heldout".

Held-out rows come from sources with `split: heldout` (stages/shapes.py, chart_tables): no mix
reads them, so training never sees them. Each row lands in one set:
    generation  a prompt with a parsed spec (shapes captions)       -> GenEval-style checks
    shapes_qa   a small-world question with a computed answer       -> relaxed accuracy
    chart_qa    a rendered chart's computed questions               -> relaxed accuracy (ChartQA)
    text        plain text                                           -> perplexity
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.schema import STATUS_KEPT


@dataclass
class HeldOut:
    generation: list[dict] = field(default_factory=list)  # {sample_id, prompt, spec}
    shapes_qa: list[dict] = field(default_factory=list)  # {sample_id, question, answer, type, image}
    chart_qa: list[dict] = field(default_factory=list)
    text: list[dict] = field(default_factory=list)  # {sample_id, text}

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


class EvalDataError(ValueError):
    """The build has no held-out rows of a kind the evaluator needs; the message says what to add."""


def final_step_dirs(build_dir: Path) -> list[Path]:
    """Each source's last step directory (the rows that survived its whole chain)."""
    out = []
    for source in sorted(p for p in (Path(build_dir) / "work").iterdir() if p.is_dir()):
        steps = sorted(p for p in source.iterdir() if p.is_dir() and p.name[:2].isdigit())
        if steps:
            out.append(steps[-1])
    return out


def load_heldout(build_dir: Path) -> HeldOut:
    build_dir = Path(build_dir)
    if not (build_dir / "work").is_dir():
        raise EvalDataError(f"{build_dir} is not a build directory (no work/): pass the build dir of `janus-forge build`")
    sets = HeldOut()
    for step_dir in final_step_dirs(build_dir):
        files = sorted(step_dir.glob("*.parquet"))
        if not files:
            continue
        ds = pads.dataset([str(f) for f in files], format="parquet")
        cols = ["sample_id", "task", "prompt", "text", "conversation", "image", "meta", "lineage", "status"]
        table = ds.to_table(columns=[c for c in cols if c in ds.schema.names],
                            filter=(pc.field("status") == STATUS_KEPT) & pc.match_substring(pc.field("meta"), '"split": "heldout"'))
        for row in table.to_pylist():
            _add(sets, row)
    if not any(sets.sizes().values()):
        raise EvalDataError(f"{build_dir} has no held-out rows: add sources with `split: heldout` to the recipe (shapes "
                            "caption/qa/text, chart_tables; see recipes/data/tiny.yaml) and build again")
    return sets


def _add(sets: HeldOut, row: dict) -> None:
    meta = json.loads(row["meta"] or "{}")
    if meta.get("split") != "heldout":
        return
    task, sid = row["task"], row["sample_id"]
    if task == "generation" and meta.get("spec"):
        sets.generation.append({"sample_id": sid, "prompt": row["prompt"], "spec": meta["spec"]})
    elif task == "text":
        sets.text.append({"sample_id": sid, "text": row["text"]})
    elif task == "understanding" and "question_type" in meta:
        question = row["conversation"][0]["content"].replace("<image_placeholder>", "").strip()
        sets.shapes_qa.append({"sample_id": sid, "question": question, "answer": meta["answer"], "type": meta["question_type"],
                               "image": row["image"]["bytes"]})
    elif task == "understanding":  # a chart: every computed question of its conversation, one at a time
        params = json.loads((row.get("lineage") or {}).get("params") or "{}")
        templates = [t for t in params.get("templates", []) if t != "transcription"]
        turns = row["conversation"]
        pairs = [(turns[i]["content"].replace("<image_placeholder>", "").strip(), turns[i + 1]["content"])
                 for i in range(0, len(turns) - 1, 2)]
        for j, (question, answer) in enumerate(pairs[: len(templates)]):
            sets.chart_qa.append({"sample_id": f"{sid}#{j}", "question": question, "answer": answer, "type": templates[j],
                                  "image": row["image"]["bytes"]})
