"""The patched build: it is what llama-cpp-python loads, it is cached, and bad input fails cleanly."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pyorthrus import build


def run_build(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyorthrus.build", *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def test_llama_cpp_loads_the_patched_library():
    info = build.installed_build_info()
    assert info["patched"], "llama_cpp loaded a library without llama_orthrus_api_version"
    from pyorthrus import _lib

    assert info["orthrus_api_version"] == _lib.LLAMA_ORTHRUS_API_VERSION
    # The installed wheel was built from exactly this checkout's patch series.
    assert info["build"]["patches_sha256"] == build.patch_series_hash(build.patch_files(build.REPO_PATCHES))
    assert info["build"]["patches"] == [p.name for p in build.patch_files(build.REPO_PATCHES)]


def test_a_regular_install_builds_and_runs(tmp_path):
    """`pip install .` (not editable) ships the patch series inside the package: its `pyorthrus build` finds the
    same series (so the same cached wheel, already installed here) and its `pyorthrus generate` answers, from a
    directory with no checkout in sight."""
    repo = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a copy, so setuptools' build/ and egg-info stay out of the checkout
    skipped_everywhere = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__")

    def skipped(directory: str, names: list[str]) -> set[str]:  # the top-level tests/ and bench/, not pyorthrus/bench
        return set(skipped_everywhere(directory, names)) | ({"tests", "bench"} if Path(directory) == repo else set())

    shutil.copytree(repo, source, ignore=skipped)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True)
    assert sorted(p.name for p in (site / "pyorthrus" / "patches").glob("*.patch")) == \
        [p.name for p in build.patch_files(repo / "patches")]
    env = dict(os.environ, PYTHONPATH=str(site))

    def pyorthrus(*args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "pyorthrus", *args], cwd=tmp_path, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    built = json.loads(pyorthrus("build", "--json"))
    assert built["action"] == "already installed"
    assert built["key"] == build.make_config().key
    answer = json.loads(pyorthrus("generate", "--chat", "-p", "What is the capital of France?", "-n", "12",
                                  "--json"))
    assert "Paris" in answer["text"]


def test_build_check_reports_patch(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pyorthrus.cli", "build", "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "orthrus patch: present" in result.stdout


def test_smollm2_answers_paris(smollm2):
    reply = smollm2.create_chat_completion(
        # An explicit system message: SmolLM2-135M's built-in default one derails it on this question.
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}], temperature=0.0, max_tokens=24)
    assert "Paris" in reply["choices"][0]["message"]["content"]


def test_cache_key_tracks_everything_that_changes_the_binary(tmp_path):
    base = build.make_config("cpu", "strict")
    assert build.make_config("cpu", "strict").key == base.key
    assert build.make_config("cpu", "fast").key != base.key
    assert build.make_config("cpu", "strict", ["-DGGML_NATIVE=OFF"]).key != base.key
    assert build.make_config("cuda", "strict").key != base.key
    sanitized = build.make_config("cpu", "strict", sanitize=True)
    assert sanitized.key != base.key and "-DLLAMA_SANITIZE_ADDRESS=ON" in sanitized.cmake_args
    edited = tmp_path / "patches"
    shutil.copytree(build.REPO_PATCHES, edited)
    first = sorted(edited.glob("*.patch"))[0]
    first.write_bytes(first.read_bytes() + b"\n")
    assert build.make_config("cpu", "strict", patches_dir=edited).key != base.key


def test_second_build_installs_from_cache_without_compiling():
    config = build.make_config()
    assert build.cached_wheel(config, build.default_cache_dir()) is not None
    assert build.installed_build_key() == config.key
    result = run_build("--json")
    assert result.returncode == 0, result.stderr
    assert '"action": "already installed"' in result.stdout
    assert "building llama.cpp" not in result.stderr


def test_the_sanitizer_build_lives_apart_from_the_installed_one(tmp_path, monkeypatch):
    """Building it takes ~15 minutes (bench/fuzz.py --sanitize does); here: where it goes and how Python runs it."""
    config = build.make_config("cpu", sanitize=True)
    target = build.sanitized_dir(config, tmp_path)
    assert target.is_relative_to(tmp_path) and target.name == config.key
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = build.sanitizer_env(target)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(target), "/elsewhere"]  # its llama_cpp is found first
    preload = [Path(p) for p in env["LD_PRELOAD"].split(":")]
    assert [p.name.split(".")[0] for p in preload] == ["libasan", "libstdc++"] and all(p.is_file() for p in preload)
    assert "detect_leaks=0" in env["ASAN_OPTIONS"]
    result = run_build("--env")
    assert result.returncode == 1 and "--env goes with --sanitize" in result.stderr


def test_unknown_backend_is_a_one_line_error():
    result = run_build("--backend", "vulkan-x")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["pyorthrus build: error: unknown backend 'vulkan-x': "
                                                  "choose one of auto, cpu, cuda, metal"]


def test_corrupt_cached_sdist_is_refused(tmp_path):
    before = build.installed_build_key()
    sdist = tmp_path / "sdist" / build.SDIST_NAME
    sdist.parent.mkdir()
    sdist.write_bytes(b"not a tarball")
    result = run_build("--cache-dir", str(tmp_path))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert str(sdist) in line and "checksum mismatch" in line
    assert not (tmp_path / "wheels").exists()
    assert build.installed_build_key() == before


def test_patch_that_does_not_apply_is_named(tmp_path):
    before = build.installed_build_key()
    cache = tmp_path / "cache"
    (cache / "sdist").mkdir(parents=True)
    real_sdist = build.ensure_sdist(build.default_cache_dir())
    try:
        os.link(real_sdist, cache / "sdist" / build.SDIST_NAME)
    except OSError:
        shutil.copy(real_sdist, cache / "sdist" / build.SDIST_NAME)
    patches = tmp_path / "patches"
    shutil.copytree(build.REPO_PATCHES, patches)
    bad = patches / "9999-does-not-apply.patch"
    bad.write_text("diff --git a/include/llama.h b/include/llama.h\n--- a/include/llama.h\n+++ b/include/llama.h\n"
                   "@@ -1,3 +1,3 @@\n-this line is not in llama.h\n+nor is this\n context\n")
    result = run_build("--cache-dir", str(cache), "--patches", str(patches))
    assert result.returncode == 1
    [line] = [l for l in result.stderr.strip().splitlines() if "error" in l]
    assert str(bad) in line and "does not apply" in line
    assert not list((cache / "wheels").glob("*/*.whl"))
    assert build.installed_build_key() == before
