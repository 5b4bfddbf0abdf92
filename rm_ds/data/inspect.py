"""``rm-ds inspect FILE``: what rm_ds would load from a dataset, without training.

    rm-ds inspect pairs.jsonl --tokenizer builtin:minilm --max-length 256
    rm-ds inspect samples_labelled.jsonl --tie-eps 0.0          (scored-responses files)

Pair data (anything ``rm_ds.data.pairs.load_pairs`` reads): the detected format (text or chat), rows,
valid pairs, invalid rows by reason with the first messages (file, line, field), the share of pairs
the tokenizer truncates or drops at ``max_length`` (``rm_ds.data.tokenize`` rules), percentiles of prompt,
response and pair lengths in tokens, and pairs per source. Scored-responses files (rows with
``responses``): prompts, responses per prompt, whether they are labelled, and the gold ties and pairs
``rm-ds label`` would make. Exits 3 (a data error) when any row is invalid, unless ``--skip-invalid``.

The tokenizer loader is passed in by the command (``rm_ds.model.load_tokenizer``): data/ imports nothing above it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rm_ds.data.jsonl import iter_lines
from rm_ds.data.validate import PairFields
from rm_ds.errors import ConfigError, DataError

PERCENTILES = (50, 90, 99, 100)


def _first_row(path: str) -> dict | None:
    """The first line of a JSON lines file if it is an object (to tell scored responses from pairs)."""
    p = Path(path)
    if not p.name.endswith((".jsonl", ".jsonl.gz")) or not p.is_file():
        return None
    for _, row in iter_lines(p):
        return row if isinstance(row, dict) else None
    return None


def _percentiles(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return "-"
    return "  ".join(f"p{q} {np.percentile(v, q):.0f}" for q in PERCENTILES)


def inspect_pairs(path: str, *, tokenizer: str | None, max_length: int, chat_template: bool = False,
                  fields: PairFields | None = None,
                  load_tokenizer: Callable[[str], object] | None = None) -> tuple[list[str], int]:
    """Summary lines and the number of invalid rows of a pair dataset; with ``tokenizer`` (a name that
    ``load_tokenizer`` loads), the token lengths and what ``max_length`` cuts."""
    from rm_ds.builtin import rm_ds_home
    from rm_ds.data.pairs import load_pairs
    from rm_ds.data.dataset import resolve_data_path

    source = resolve_data_path(path, builtin_dir=rm_ds_home() / "data")
    ds, report = load_pairs(source, skip_invalid=True, fields=fields)
    invalid = sum(report.skipped.values())
    fmt = ds[0]["format"] if len(ds) else "?"
    lines = [f"file: {path}", f"format: {report.format} ({fmt}), {report.format_reason}",
             f"rows: {report.n_rows}  valid: {report.n_loaded}  invalid: {invalid}"]
    lines += [f"  not read: {entry}" for entry in report.not_read]
    lines += [f"  invalid, {reason}: {n}" for reason, n in sorted(report.skipped.items())]
    lines += [f"  e.g. {m}" for m in report.examples]
    ties = report.skipped.get("identical chosen and rejected", 0)
    lines.append(f"ties (identical chosen and rejected): {ties}")
    if "margin" in ds.column_names and fields and fields.margin:
        lines.append(f"zero margins: {int(np.sum(np.asarray(ds['margin']) == 0))}")
    if tokenizer:
        if load_tokenizer is None:
            raise ValueError("inspect_pairs: a tokenizer name needs load_tokenizer")
        from rm_ds.data.tokenize import TokenizeOptions, tokenize_pairs

        tok, treport = tokenize_pairs(ds, load_tokenizer(tokenizer), TokenizeOptions(
            max_length=max_length, chat_template=chat_template))
        counts = treport.counts
        n = max(1, treport.n_pairs)
        lines.append(f"tokenized with {tokenizer}, max_length {max_length}: {treport.summary()}")
        for status in ("prompt_truncated", "response_truncated", "dropped_overlong", "dropped_template"):
            if counts.get(status):
                lines.append(f"  {status}: {counts[status]} ({counts[status] / n:.1%})")
        if len(tok):
            prompt_len = [len(x) for x in tok["prompt_ids"]]
            resp_len = [len(x) for x in tok["chosen_ids"]] + [len(x) for x in tok["rejected_ids"]]
            lines += [f"prompt tokens:   {_percentiles(prompt_len)}",
                      f"response tokens: {_percentiles(resp_len)}",
                      f"pair tokens:     {_percentiles(tok['pair_len'])}"]
    sources = Counter(ds["source"])
    lines.append("sources: " + (", ".join(f"{s or '(none)'} {c}" for s, c in sources.most_common(20))))
    return lines, invalid


def inspect_scored(path: str, *, tie_eps: float) -> tuple[list[str], int]:
    """Summary lines of a scored-responses file (a bad row raises with its line and field)."""
    from rm_ds.data.scored import make_pairs, read_scored

    rows = read_scored(path)
    n_resp = Counter(len(r["responses"]) for r in rows)
    labelled = sum(r.get("rewards") is not None for r in rows)
    lines = [f"file: {path}", "format: scored responses",
             (f"prompts: {len(rows)}  responses per prompt: {dict(sorted(n_resp.items()))}  "
             f"labelled: {labelled}/{len(rows)}")]
    resp_chars = [len(x) for r in rows for x in r["responses"]]
    lines.append(f"response characters: {_percentiles(resp_chars)}")
    if labelled == len(rows):
        _, st = make_pairs(rows, tie_eps=tie_eps)
        rewards = np.array([x for r in rows for x in r["rewards"]])
        lines.append(f"gold rewards: mean {rewards.mean():.4g}  std {rewards.std():.4g}  "
                     f"min {rewards.min():.4g}  max {rewards.max():.4g}")
        lines.append(f"pairs (tie_eps {tie_eps}): {st.summary()}")
    policies = Counter(str(r.get("policy", "")) for r in rows)
    lines.append("policies: " + ", ".join(f"{p or '(none)'} {c}" for p, c in policies.most_common(5)))
    return lines, 0


@dataclass(frozen=True)
class InspectOptions:
    """``rm-ds inspect``'s command line (``rm_ds.cli``)."""

    file: str
    tokenizer: str = "builtin:minilm"
    max_length: int = 256
    chat_template: bool = False
    skip_invalid: bool = False
    prompt_field: str = "prompt"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    margin_field: str | None = None
    tie_eps: float = 0.0


def main(args: InspectOptions, *, load_tokenizer: Callable[[str], object] | None = None) -> int:
    """The ``rm-ds inspect`` entry: exit code 0, or 3 (a data error) when rows are invalid."""
    if args.max_length < 1:
        raise ConfigError(f"--max-length: must be >= 1, got {args.max_length}")
    first = _first_row(args.file)
    if first is not None and "responses" in first:
        lines, invalid = inspect_scored(args.file, tie_eps=args.tie_eps)
    else:
        fields = PairFields(prompt=args.prompt_field, chosen=args.chosen_field, rejected=args.rejected_field,
                            margin=args.margin_field)
        lines, invalid = inspect_pairs(args.file, tokenizer=args.tokenizer or None, max_length=args.max_length,
                                       chat_template=args.chat_template, fields=fields,
                                       load_tokenizer=load_tokenizer)
    print("\n".join(lines), flush=True)
    if invalid and not args.skip_invalid:
        print(f"inspect: {invalid} invalid rows (training would stop at the first; pass --skip-invalid "
              f"to accept dropping them, as data.skip_invalid=true does)", flush=True)
        return DataError.exit_code
    return 0
