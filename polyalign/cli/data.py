"""``polyalign data inspect|convert|build``: look at a data set, convert it, or build one.

* ``inspect PATH`` prints the detected format, the data rows read = used + skipped (in
  all and per language: every row of the input is a record or a counted skip), what the
  reader detected (e.g. an MPO file's dominant language), record counts (by type and by language),
  prompt/response length statistics in characters (min / median / max) and every content
  problem, one per line; with ``--model M`` also M's tokenizer fertility per language
  (:mod:`polyalign.data.fertility`). Exit code 0 whenever the data could be read, problems or not
  (they are listed and counted); 2 for a structural error (one line on stderr).
* ``convert PATH --to canonical|trl|mpo -o OUT`` reads, writes atomically and prints what
  was read, skipped and written.
"""

from __future__ import annotations

import argparse
import json

from polyalign.cli.build import register_build
from polyalign.data.fertility import fertility, fertility_lines, load_tokenizer, record_texts
from polyalign.data.readers import FORMATS, ReadResult, read_records
from polyalign.data.summary import summarize
from polyalign.data.writers import WRITE_FORMATS, unrepresentable, write_records
from polyalign.errors import UserError

MAX_PROBLEMS_IN_CONVERT = 20


def parse_column_map(text: str | None) -> dict[str, str] | None:
    """``"prompt=question,chosen=good"`` -> ``{"prompt": "question", "chosen": "good"}``."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UserError(f"expected FIELD=COLUMN pairs separated by commas, got {part!r}", field="--column-map")
        out[key.strip()] = value.strip()
    return out


def _read(args: argparse.Namespace) -> ReadResult:
    return read_records(
        args.path, args.format, column_map=parse_column_map(args.column_map), language=args.language,
        dominant_language=args.dominant_language, detect_language=not args.no_detect,
        check_language=not args.no_language_check, strict=args.strict,
        language_threshold=args.language_threshold,
    )


def _inspect(args: argparse.Namespace) -> int:
    if args.max_length is not None and (not args.model or args.max_length < 1):
        raise UserError("needs --model and a positive number of tokens", field="--max-length")
    result = _read(args)
    summary = summarize(result)
    if args.model:  # tokenizer fertility per language (polyalign.data.fertility)
        summary["fertility"] = fertility(load_tokenizer(args.model), record_texts(result.records),
                                         max_length=args.max_length)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        return 0
    types = ", ".join(f"{k}: {v}" for k, v in summary["record_types"].items())
    print(f"path: {summary['path']}")
    print(f"format: {summary['format']}")
    for note in summary["notes"]:
        print(f"note: {note}")
    rows = summary["rows"]
    print(f"rows: {rows['read']} read = {rows['used']} used + {rows['skipped']} skipped")
    if len(summary["rows_per_language"]) > 1 or "*" not in summary["rows_per_language"]:
        print("rows per language: read / used / skipped")
        for lang, row in summary["rows_per_language"].items():
            print(f"  {lang:<8} {row['read']} / {row['used']} / {row['skipped']}")
    print(f"records: {summary['records']}" + (f" ({types})" if types else ""))
    skipped = summary["skipped"]
    reasons = ", ".join(f"{k}: {v}" for k, v in skipped.items())
    print(f"skipped: {sum(skipped.values())}" + (f" ({reasons})" if reasons else ""))
    print("languages:")
    for lang, count in summary["languages"].items():
        print(f"  {lang:<8} {count}")
    print("lengths (characters): n / min / median / max")
    for name, s in summary["lengths"].items():
        print(f"  {name:<9} {s['n']} / {s['min']} / {s['median']:g} / {s['max']}")
    print(f"problems: {len(summary['problems'])}")
    for line in summary["problems"]:
        print(f"  {line}")
    if "fertility" in summary:
        print(f"tokenizer fertility ({args.model}; prompts and responses, content tokens without special tokens):")
        print("\n".join(fertility_lines(summary["fertility"])))
    return 0


def _convert(args: argparse.Namespace) -> int:
    result = _read(args)
    lost = unrepresentable(result.records, args.to)
    rows = write_records(result.records, args.output, args.to)
    skipped = sum(result.skipped.values())
    reasons = ", ".join(f"{k}: {v}" for k, v in result.skipped.items())
    for note in result.notes:
        print(f"note: {note}")
    print(f"read {len(result.records)} records from {result.path} (format {result.format}); "
          f"{result.rows} data rows = {len(result.records)} used + {sum(result.skipped.values())} skipped")
    print(f"skipped {skipped}" + (f" ({reasons})" if reasons else ""))
    for problem in result.problems[:MAX_PROBLEMS_IN_CONVERT]:
        print(f"  {problem}")
    if len(result.problems) > MAX_PROBLEMS_IN_CONVERT:
        print(f"  ... {len(result.problems) - MAX_PROBLEMS_IN_CONVERT} more (see `polyalign data inspect`)")
    for what, count in lost.items():
        print(f"note: the {args.to} format cannot hold {what}; dropped from {count} records")
    print(f"wrote {rows} rows to {args.output} (format {args.to})")
    return 0


def _add_read_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a data file or folder")
    parser.add_argument("--format", help=f"skip auto-detection: one of {', '.join(FORMATS)}")
    parser.add_argument("--column-map", help="for generic jsonl/csv: FIELD=COLUMN pairs, e.g. text=goal")
    parser.add_argument("--language", help="language of data that has no label (TRL, generic, MPO target)")
    parser.add_argument("--dominant-language", default=None,
                        help="MPO source-side language (default: detected by majority vote, and printed)")
    parser.add_argument("--no-detect", action="store_true", help="no lingua language detection at all")
    parser.add_argument("--no-language-check", action="store_true",
                        help="do not flag declared languages that lingua contradicts")
    parser.add_argument("--language-threshold", type=float, default=None, metavar="CONF",
                        help="lingua confidence (0-1] from which a contradicted language label skips the row "
                             "(default 0.9; short texts of closely related languages are never skipped)")
    parser.add_argument("--strict", action="store_true", help="fail on the first content problem")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with ``inspect`` and ``convert`` to the ``polyalign`` parser."""
    data = subparsers.add_parser("data", help="inspect or convert data sets", description=__doc__.splitlines()[0])
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    inspect = commands.add_parser("inspect", help="format, counts, lengths and problems of a data set")
    _add_read_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print a JSON summary")
    inspect.add_argument("--model", help="also show this model's tokenizer fertility per language (tokens per "
                         "character / whitespace word, token premium vs en)")
    inspect.add_argument("--max-length", type=int, metavar="N",
                         help="with --model: count the texts of each language longer than N tokens")
    inspect.set_defaults(func=_inspect)

    convert = commands.add_parser("convert", help="convert a data set to canonical, TRL or MPO form")
    _add_read_options(convert)
    convert.add_argument("--to", required=True, choices=WRITE_FORMATS, help="output format")
    convert.add_argument("-o", "--output", required=True, help="output file (written atomically)")
    convert.set_defaults(func=_convert)
    register_build(commands)
