"""`pyorthrus build`: download the pinned llama-cpp-python sdist, apply patches/*.patch to its vendored llama.cpp,
build a wheel for the chosen backend and install it into the running interpreter's environment.

Only the standard library is used here, so `python -m pyorthrus.build` works on a fresh environment before numpy,
gguf or llama_cpp are installed. Built wheels are cached under a key of everything that changes the binary (sdist
hash, patch series hash, backend and CMake flags, CPU features), so a second run installs in seconds. The source it
builds (the pinned sdist, the patch series, the patched tree) is pyorthrus.llama_source's, which the converter uses
too.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import PyorthrusError
from .llama_source import (REPO_PATCHES, SDIST_REQUIREMENT, SDIST_SHA256, cpu_features, ensure_sdist, patch_files,
                           patch_series_hash, patched_source_dir, plain_source_dir, unpack_patched)
from .llama_source import SDIST_NAME  # noqa: F401  (tests name the cached sdist through this verb)
from .paths import default_cache_dir
from .strict import BUILD_CMAKE_ARGS

BUILD_INFO_FILE = "_pyorthrus_build.json"  # written into the llama_cpp package of the wheel
BACKENDS = ("auto", "cpu", "cuda", "metal")
FLAVOURS = ("strict", "fast")

# Flags of every build: no llava/mtmd library (we never use it; saves a third of the build time).
COMMON_CMAKE_ARGS = ["-DLLAVA_BUILD=OFF"]
BACKEND_CMAKE_ARGS = {"cpu": [], "cuda": ["-DGGML_CUDA=ON"], "metal": ["-DGGML_METAL=ON"]}
# ggml's AMX int8 kernels (compiled in by -march=native on AMX CPUs) segfault in ggml_backend_amx_mul_mat on
# SmolLM2 Q4_1 with this llama.cpp, and as an extra buffer type their numerics depend on the batch shape.
X86_CMAKE_ARGS = ["-DCMAKE_C_FLAGS=-mno-amx-int8", "-DCMAKE_CXX_FLAGS=-mno-amx-int8"]
# "strict": batch-invariant CPU matmuls (pyorthrus.strict); "fast" keeps llama.cpp's defaults.
FLAVOUR_CMAKE_ARGS = {"strict": BUILD_CMAKE_ARGS, "fast": []}
# `--sanitize`: AddressSanitizer + UndefinedBehaviorSanitizer in both libllama and libggml (for bench/fuzz.py and the
# C-level tests). Python itself is not instrumented, so the runtime is preloaded: see sanitizer_env().
SANITIZE_CMAKE_ARGS = ["-DLLAMA_SANITIZE_ADDRESS=ON", "-DLLAMA_SANITIZE_UNDEFINED=ON",
                       "-DGGML_SANITIZE_ADDRESS=ON", "-DGGML_SANITIZE_UNDEFINED=ON"]


def detect_backend() -> str:
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    if shutil.which("nvcc") and shutil.which("nvidia-smi"):
        if subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
            return "cuda"
    return "cpu"


@dataclass
class BuildConfig:
    backend: str
    flavour: str
    cmake_args: list[str]
    patches: list[Path] = field(repr=False)
    sdist_sha256: str = SDIST_SHA256
    patches_sha256: str = ""
    cpu: str = ""

    def __post_init__(self):
        self.patches_sha256 = self.patches_sha256 or patch_series_hash(self.patches)
        self.cpu = self.cpu or cpu_features()

    @property
    def key(self) -> str:
        """Cache key of the wheel: everything that changes the built binary."""
        parts = [self.sdist_sha256, self.patches_sha256, self.backend, self.flavour, *self.cmake_args, self.cpu,
                 f"py{sys.version_info.major}{sys.version_info.minor}"]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]

    def info(self) -> dict:
        info = asdict(self)
        info["patches"] = [p.name for p in self.patches]
        info["key"] = self.key
        info["llama_cpp_python"] = SDIST_REQUIREMENT
        return info


def make_config(backend: str = "auto", flavour: str = "strict", extra_cmake_args: list[str] | None = None,
                patches_dir: Path = REPO_PATCHES, sanitize: bool = False) -> BuildConfig:
    if backend not in BACKENDS:
        raise PyorthrusError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if flavour not in FLAVOURS:
        raise PyorthrusError(f"unknown flavour {flavour!r}: choose one of {', '.join(FLAVOURS)}")
    backend = detect_backend() if backend == "auto" else backend
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cmake_args = [*COMMON_CMAKE_ARGS, *(X86_CMAKE_ARGS if x86 else []), *BACKEND_CMAKE_ARGS[backend],
                  *FLAVOUR_CMAKE_ARGS[flavour], *(SANITIZE_CMAKE_ARGS if sanitize else []),
                  *(extra_cmake_args or [])]
    return BuildConfig(backend=backend, flavour=flavour, cmake_args=cmake_args, patches=patch_files(patches_dir))


def cached_wheel(config: BuildConfig, cache_dir: Path) -> Path | None:
    wheels = sorted((cache_dir / "wheels" / config.key).glob("*.whl"))
    return wheels[0] if wheels else None


def _run_logged(cmd: list[str], env: dict, cwd: Path, log: Path) -> int:
    """Run a long command, keeping its full output in `log` and showing CMake's [NN%] progress on one line."""
    interactive = sys.stderr.isatty()
    start = time.monotonic()
    last_shown = ""
    with open(log, "w") as out, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            match = re.search(r"\[\s*(\d+)%\]", line)
            if match and match.group(1) != last_shown:
                last_shown = match.group(1)
                status = f"building llama.cpp: {last_shown:>3}%  ({time.monotonic() - start:.0f}s)"
                if interactive:
                    print("\r" + status, end="", file=sys.stderr, flush=True)
                elif int(last_shown) % 25 == 0:
                    print(status, file=sys.stderr, flush=True)
        proc.wait()
    if interactive:
        print(file=sys.stderr)
    return proc.returncode


def build_wheel(config: BuildConfig, cache_dir: Path, jobs: int) -> Path:
    sdist = ensure_sdist(cache_dir)
    work_parent = cache_dir / "work"
    work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_parent) as tmp:
        root = unpack_patched(sdist, config.patches, Path(tmp))
        (root / "llama_cpp" / BUILD_INFO_FILE).write_text(json.dumps(config.info(), indent=2) + "\n")
        env = dict(os.environ, CMAKE_ARGS=" ".join(config.cmake_args), CMAKE_BUILD_PARALLEL_LEVEL=str(jobs))
        out_dir = Path(tmp) / "dist"
        log = cache_dir / "build.log"
        print(f"building {SDIST_REQUIREMENT} + {len(config.patches)} patches, backend {config.backend}, "
              f"{config.flavour} ({' '.join(config.cmake_args)}); log: {log}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(out_dir), str(root)]
        if _run_logged(cmd, env, root, log) != 0:
            raise PyorthrusError(f"building llama.cpp failed; see the last lines of {log}")
        wheel = next(out_dir.glob("*.whl"))
        final_dir = cache_dir / "wheels" / config.key
        staging = Path(tempfile.mkdtemp(dir=work_parent))
        shutil.move(str(wheel), staging / wheel.name)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, final_dir)
    return final_dir / wheel.name


def install_wheel(wheel: Path) -> None:
    for cmd in ([sys.executable, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", str(wheel)],
                [sys.executable, "-m", "pip", "install", "--quiet", str(wheel)]):  # the second adds its deps
        if subprocess.run(cmd).returncode != 0:
            raise PyorthrusError(f"pip could not install {wheel}")


def sanitized_dir(config: BuildConfig, cache_dir: Path) -> Path:
    """Where a sanitizer build is installed: apart from the environment, put first on PYTHONPATH to use it."""
    return cache_dir / "sanitize" / config.key


def install_sanitized(wheel: Path, target: Path) -> None:
    """Unpack the wheel's llama_cpp package into target (pip --target), replacing whatever was there atomically."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(staging), str(wheel)]
    if subprocess.run(cmd).returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise PyorthrusError(f"pip could not unpack {wheel} into {target}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def sanitizer_env(target: Path) -> dict[str, str]:
    """Environment variables that make a Python process load the sanitizer build in target: its llama_cpp first
    on the path; the ASan runtime preloaded (the interpreter is not instrumented, and ASan must come first) with
    libstdc++ (ASan finds __cxa_throw only in libraries loaded before it starts: without it the first C++ exception,
    i.e. every refused file, stops the process); leak checks off (the interpreter keeps its memory until exit); and
    every UBSan report with its stack."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or "cc"
    preload = []
    for library in ("libasan.so", "libstdc++.so.6"):
        found = subprocess.run([compiler, f"-print-file-name={library}"], capture_output=True, text=True).stdout.strip()
        if not found or not Path(found).is_file():  # the compiler echoes the bare name when it has no such file
            raise PyorthrusError(f"{compiler} has no {library} (install the compiler's sanitizer runtime and C++ "
                                 "library, e.g. libasan8 and libstdc++6)")
        preload.append(str(Path(found).resolve()))
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "LD_PRELOAD": ":".join(preload),
            "ASAN_OPTIONS": "detect_leaks=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=0"}


def installed_llama_cpp_dir() -> Path | None:
    """The directory of the llama_cpp package installed here, found without importing (loading) it."""
    importlib.invalidate_caches()  # a wheel may have been installed by a pip child process just now
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def build_example_binary(out_dir: Path, cache_dir: Path, patches_dir: Path = REPO_PATCHES) -> Path:
    """Compile the patch series' examples/orthrus/orthrus.cpp into out_dir/llama-orthrus, linked against the
    libllama of the llama_cpp installed here (it uses only llama.h, so no llama.cpp build tree is needed)."""
    package_dir = installed_llama_cpp_dir()
    if package_dir is None:
        raise PyorthrusError("llama_cpp is not installed: run `pyorthrus build` first")
    lib_dir = package_dir / "lib"
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("clang++") or shutil.which("g++")
    if compiler is None:
        raise PyorthrusError("no C++ compiler found (set CXX, or install g++ / Xcode command line tools)")
    tree = patched_source_dir(cache_dir, patches_dir)
    source = tree / "examples" / "orthrus" / "orthrus.cpp"
    if not source.is_file():
        raise PyorthrusError(f"{patches_dir}: the patch series has no examples/orthrus/orthrus.cpp")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "llama-orthrus"
    tmp = out_dir / ".llama-orthrus.tmp"
    cmd = [compiler, "-O2", "-std=c++17", f"-I{tree / 'include'}", f"-I{tree / 'ggml' / 'include'}", str(source),
           "-o", str(tmp), f"-L{lib_dir}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
        raise PyorthrusError(f"compiling {source.name} failed: {first}")
    os.replace(tmp, target)
    return target


# llama-server from the patched tree: tools on, nothing fetched at configure or build time (no prebuilt web UI: the
# server embeds an empty one and serves the API), a static binary that needs no library beside it
SERVER_CMAKE_ARGS = ["-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
                     "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                     "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DCMAKE_BUILD_TYPE=Release"]


def build_server_binary(out_dir: Path, config: BuildConfig, cache_dir: Path, jobs: int,
                        patches_dir: Path = REPO_PATCHES, plain: bool = False) -> Path:
    """Build llama-server (with `--spec-type orthrus`, patch 0020) from the patched tree into out_dir/llama-server,
    with the flags of `config` (backend, flavour). llama-server links llama.cpp's C++ internals (common/), so it
    is built from the same tree rather than against the installed library; the build directory is cached under
    the config's key, so a second call only copies the binary.

    plain: build out_dir/llama-server-plain instead, from the vendored tree without the patch series and with
    llama.cpp's default flags for the backend (no strict flavour): plain llama.cpp, the peer of the benchmarks."""
    if shutil.which("cmake") is None:
        raise PyorthrusError("building llama-server needs cmake on PATH (pip install cmake)")
    if plain:
        tree = plain_source_dir(cache_dir)
        config = replace(make_config(config.backend, "fast", patches_dir=patches_dir), flavour="plain", patches=[],
                         patches_sha256="plain")
        name = "llama-server-plain"
    else:
        tree = patched_source_dir(cache_dir, patches_dir)
        name = "llama-server"
    build_dir = cache_dir / "server-build" / config.key
    log = cache_dir / "server-build.log"
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(jobs))
    print(f"building {name} (backend {config.backend}, {config.flavour}); "
          f"log: {log}", file=sys.stderr)
    configure = ["cmake", "-S", str(tree), "-B", str(build_dir), *config.cmake_args, *SERVER_CMAKE_ARGS]
    build = ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)]
    for cmd in (configure, build):
        if _run_logged(cmd, env, tree, log) != 0:
            raise PyorthrusError(f"building {name} failed; see the last lines of {log}")
    built = build_dir / "bin" / "llama-server"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    tmp = out_dir / f".{name}.tmp"
    shutil.copy2(built, tmp)
    os.replace(tmp, target)
    return target


def installed_build_key() -> str | None:
    """The cache key recorded in the installed llama_cpp package, read without loading the library."""
    package_dir = installed_llama_cpp_dir()
    if package_dir is None:
        return None
    record = package_dir / BUILD_INFO_FILE
    return json.loads(record.read_text()).get("key") if record.exists() else None


def installed_build_info() -> dict:
    """What the llama_cpp importable here is: its version, our build record, and the patched marker."""
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as low_level
    except ImportError as exc:
        raise PyorthrusError(f"llama_cpp is not importable ({exc}); run `pyorthrus build`") from exc
    record_path = Path(llama_cpp.__file__).parent / BUILD_INFO_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    lib = low_level._lib
    api_version = lib.llama_orthrus_api_version() if hasattr(lib, "llama_orthrus_api_version") else None
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "library": getattr(lib, "_name", None),
        "patched": api_version is not None,
        "orthrus_api_version": api_version,
        "build": record,
        "system_info": low_level.llama_print_system_info().decode(),
    }


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build llama-cpp-python 0.3.36 with the pyorthrus patch series applied to its llama.cpp and install it "
        "into this Python environment. Wheels are cached (key: sdist hash, patch series, backend, flags, CPU), "
        "so a second run installs in seconds.")
    parser.add_argument("--backend", default="auto",
                        help="auto (Metal on Apple Silicon, CUDA when nvcc and a GPU are present, else CPU), cpu, "
                             "cuda or metal")
    parser.add_argument("--flavour", default="strict",
                        help="strict (default: batch-invariant CPU matmuls, so Orthrus output equals AR output "
                             "bit for bit) or fast (llamafile sgemm: 5-13%% faster K-token passes on CPU)")
    parser.add_argument("--cmake-args", default="", help="extra CMake flags, e.g. \"-DGGML_NATIVE=OFF\"")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached wheel exists, and "
                                                             "download the sdist again")
    parser.add_argument("--check", action="store_true",
                        help="build nothing: report the installed llama.cpp, its backend and the Orthrus patch")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $PYORTHRUS_CACHE or "
                                                                     "~/.cache/pyorthrus")
    parser.add_argument("--patches", type=Path, default=REPO_PATCHES, help="patch series directory")
    parser.add_argument("--binary", type=Path, default=None, metavar="DIR",
                        help="also compile the llama-orthrus command-line example into DIR, linked against the "
                             "installed library (needs a C++ compiler; `DIR/llama-orthrus --help`)")
    parser.add_argument("--server", type=Path, default=None, metavar="DIR",
                        help="also build llama-server from the patched tree into DIR, with `--spec-type orthrus "
                             "--orthrus-adapter FILE` (needs cmake and a C++ compiler; a few minutes the first time, "
                             "cached after)")
    parser.add_argument("--plain-server", type=Path, default=None, metavar="DIR",
                        help="also build plain llama.cpp's llama-server into DIR/llama-server-plain: the vendored "
                             "tree without the patch series, llama.cpp's default flags. It is the peer that "
                             "bench/llama_server.py --peer measures against (a few minutes, cached after)")
    parser.add_argument("--sanitize", action="store_true",
                        help="an AddressSanitizer + UndefinedBehaviorSanitizer build, for fuzzing and debugging: "
                             "cached under its own key and installed apart (never replaces the installed build); "
                             "prints the environment that runs Python with it, e.g. "
                             "`env $(pyorthrus build --sanitize --env) python bench/fuzz.py ...`")
    parser.add_argument("--env", action="store_true",
                        help="with --sanitize: print only the VAR=value lines of that environment")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    if args.check:
        info = installed_build_info()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            build = info["build"] or {}
            print(f"llama-cpp-python {info['llama_cpp_python']}  ({info['library']})")
            print(f"backend: {build.get('backend', 'unknown (not built by pyorthrus)')}  "
                  f"flavour: {build.get('flavour', '-')}  flags: {' '.join(build.get('cmake_args', []))}")
            print(f"orthrus patch: {'present, API v%d' % info['orthrus_api_version'] if info['patched'] else 'MISSING'}")
            print(f"system: {info['system_info']}")
        return 0 if info["patched"] else 1

    cache_dir = args.cache_dir or default_cache_dir()
    config = make_config(args.backend, args.flavour, shlex.split(args.cmake_args), args.patches, args.sanitize)
    if args.env and not args.sanitize:
        raise PyorthrusError("--env goes with --sanitize (the default build needs no environment)")
    if args.force:
        ensure_sdist(cache_dir, redownload=True)
    wheel = None if args.force else cached_wheel(config, cache_dir)
    if args.sanitize:
        return _run_sanitized(args, config, cache_dir, wheel)
    if wheel is not None and installed_build_key() == config.key:
        action = "already installed"
    elif wheel is not None:
        action = "installed from cache"
    else:
        wheel = build_wheel(config, cache_dir, args.jobs)
        action = "built and installed"
    if action != "already installed":
        install_wheel(wheel)
    result = {"action": action, "wheel": str(wheel), **config.info()}
    if args.binary is not None:
        result["binary"] = str(build_example_binary(args.binary, cache_dir, args.patches))
    if args.server is not None:
        result["server"] = str(build_server_binary(args.server, config, cache_dir, args.jobs, args.patches))
    if args.plain_server is not None:
        result["plain_server"] = str(build_server_binary(args.plain_server, config, cache_dir, args.jobs,
                                                         args.patches, plain=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"llama-cpp-python with Orthrus patches: {action} (backend {config.backend}, {config.flavour}, "
              f"key {config.key})")
        if args.binary is not None:
            print(f"llama-orthrus: {result['binary']}")
        if args.server is not None:
            print(f"llama-server: {result['server']}")
        if args.plain_server is not None:
            print(f"plain llama-server: {result['plain_server']}")
    return 0


def _run_sanitized(args: argparse.Namespace, config: BuildConfig, cache_dir: Path, wheel: Path | None) -> int:
    target = sanitized_dir(config, cache_dir)
    if wheel is not None and (target / "llama_cpp" / BUILD_INFO_FILE).exists():
        action = "ready"
    else:
        action = "installed from cache" if wheel is not None else "built and installed"
        wheel = wheel or build_wheel(config, cache_dir, args.jobs)
        target.parent.mkdir(parents=True, exist_ok=True)
        install_sanitized(wheel, target)
    env = sanitizer_env(target)
    if args.env:
        print("\n".join(f"{k}={v}" for k, v in env.items()))
    elif args.json:
        print(json.dumps({"action": action, "target": str(target), "env": env,
                          **config.info()}, indent=2))
    else:
        print(f"sanitizer build (ASan + UBSan, key {config.key}), {action}: {target}\nrun Python with it:\n  env "
              + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " python ...")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as pyorthrus_main

    return pyorthrus_main(["build", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
