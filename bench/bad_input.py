"""Every bad input of issue 33, run against the real command line and a real `pyorthrus serve`: what the user sees.

Nothing in the table is written by hand: each command runs in a child process (the first line of its stderr, its
exit code, its time) and each request goes to a server started here with an API key (its HTTP status and error
message). The table goes to stdout, or with --readme between the bad-input markers of README.md, so that it stays
what the code does. About a minute on the embedded model (2 cores).

    python bench/bad_input.py --readme
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyorthrus.testing.bad_values import BAD_VALUES, VERBS

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- bad-input:begin -->", "<!-- bad-input:end -->"
PYORTHRUS = [sys.executable, "-m", "pyorthrus"]
API_KEY = "bad-input-key"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
BIG_BODY_MB = 50
SEEN_WIDTH = 220  # characters of what the user sees, per cell


@dataclass
class Row:
    input: str
    seen: str
    code: str
    seconds: float | None  # None: not a timed run (a step of an interactive session)


def first_line(text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return next((line for line in text.splitlines() if line.strip()), "(nothing)")


def run_cli(label: str, *args, stdin: bytes = b"", python: list[str] | None = None, seen=None) -> Row:
    """One command: by default what the user sees is the first line of its stderr."""
    start = time.perf_counter()
    run = subprocess.run([*(python or PYORTHRUS), *args], input=stdin, capture_output=True, timeout=600)
    return Row(label, seen(run) if seen else first_line(run.stderr), str(run.returncode),
               time.perf_counter() - start)


def bad_value_rows() -> list[Row]:
    """Each bad value in every verb that has the flag; verbs that say the same (up to their name) share a row."""
    rows = []
    for flag, value in BAD_VALUES:
        said: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for verb, (needs, flags) in VERBS.items():
            if flag in flags:
                row = run_cli("", verb, *needs, flag, value)
                said.setdefault((row.seen.replace(f"pyorthrus {verb}:", "pyorthrus VERB:"), row.code), []).append(
                    (verb, row.seconds))
        for (seen, code), runs in said.items():
            verbs = [verb for verb, _ in runs]
            if len(verbs) == 1:
                seen = seen.replace("pyorthrus VERB:", f"pyorthrus {verbs[0]}:")
            rows.append(Row(f"`{flag} {value}` ({', '.join(verbs)})", seen, code, max(s for _, s in runs)))
    return rows


def reader_leaves(label: str, *args) -> Row:
    """`pyorthrus ... | head -1` once head has its line: the reader is gone before the output comes."""
    start = time.perf_counter()
    child = subprocess.Popen([*PYORTHRUS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read()
    return Row(label, first_line(err), str(child.wait()), time.perf_counter() - start)


def stdout_and_footer(run) -> str:
    return f"{first_line(run.stdout)!r}, then {first_line(run.stderr)}"


def after_help(run) -> str:
    """What chat said to the line typed: its stderr after the help line it starts with."""
    return first_line(b"\n".join(run.stderr.splitlines()[1:]))


def cli_rows(work: Path) -> list[Row]:
    from pyorthrus import assets

    (work / "base.gguf").symlink_to(assets.smollm2_gguf())
    (work / "models").mkdir()
    (work / "ckpt").mkdir()
    (work / "a-file").write_text("")
    poisoned = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from pyorthrus.cli import main; "
                                      "sys.exit(main())"]
    haiku = ["generate", "-p", "Write a haiku about the sea.", "-n", "24"]
    rows = bad_value_rows() + [
        run_cli("`generate -p $'caf\\xe9'` (bytes that are not UTF-8)", b"generate", b"-p", b"caf\xe9"),
        run_cli("`generate -c 8`", "generate", "-p", "Hi", "-c", "8"),
        run_cli("`generate -n 5000` (context 2048)", "generate", "-p", "Hi", "-n", "5000"),
        run_cli("`generate -m models/` (a directory)", "generate", "-p", "Hi", "-m", "models"),
        run_cli("`generate -m base.gguf` (no Orthrus weights, no -a)", "generate", "-p", "Hi", "-m", "base.gguf"),
        run_cli("`train --help` without torch", "train", "--help", python=poisoned,
                seen=lambda run: first_line(run.stdout)),
        run_cli("`train --base base.gguf --data a-file --out o` without torch", "train", "--base", "base.gguf",
                "--data", "a-file", "--out", "o", python=poisoned),
        run_cli("`convert ckpt --adapter-out /proc/x.gguf`", "convert", "ckpt", "--adapter-out", "/proc/x.gguf"),
        run_cli("`convert ckpt --adapter-out a-file/x.gguf` (under a regular file)", "convert", "ckpt",
                "--adapter-out", "a-file/x.gguf"),
        run_cli("`convert ckpt --adapter-out /nonexistent/dir/x.gguf`", "convert", "ckpt", "--adapter-out",
                "/nonexistent/dir/x.gguf"),
        reader_leaves("`generate -p ... \\| head -1`", "generate", "-p", "Count from 1 to 100.", "-n", "64"),
        reader_leaves("`inspect ADAPTER \\| head -1`", "inspect", str(assets.default_adapter())),
        run_cli("`bench --out /proc/x`", "bench", "--out", "/proc/x"),
        run_cli("`bench --out a-file/x` (under a regular file)", "bench", "--out", "a-file/x"),
        run_cli("`bench --out /nonexistent/dir/x`", "bench", "--out", "/nonexistent/dir/x"),
        run_cli("`bench -k 4`", "bench", "-k", "4"),
        run_cli("`bench --block-sizes 4,32`", "bench", "--block-sizes", "4,32", "--no-peer"),
        run_cli("`serve --port 99999`", "serve", "--port", "99999"),
        run_cli("`serve --port -1`", "serve", "--port", "-1"),
        run_cli("`generate -p 'Write a haiku about the sea.'` (embedded chat model)", *haiku, seen=stdout_and_footer),
        run_cli("`... --raw` (no chat template)", *haiku, "--raw", seen=stdout_and_footer),
        run_cli("`generate -k auto -n 64` (profile kept from an earlier run)", "generate", "-p",
                "Count from 1 to 20.", "-k", "auto", "-n", "64"),
        run_cli("`generate --flash-attn` (plain run: llama.cpp's log)", "generate", "-p", "Hi", "-n", "8",
                "--flash-attn", seen=lambda run: f"stderr: {len(run.stderr.splitlines())} line, "
                                                 f"{first_line(run.stderr)}"),
        run_cli("`chat`, typed `/bogus`", "chat", stdin=b"/bogus\n", seen=after_help),
        run_cli("`chat`, typed `/reset`", "chat", stdin=b"/reset\n", seen=after_help),
        run_cli("`chat`, typed bytes that are not UTF-8", "chat", stdin=b"caf\xe9\n", seen=after_help),
    ]
    return rows + chat_interrupt_rows()


class Child:
    """A child process whose stdout and stderr are read as they come."""

    def __init__(self, *args, env=None):
        self.process = subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env)
        self.out = {"stdout": b"", "stderr": b""}

    def wait_for(self, stream: str, text: bytes, count: int = 1, timeout: float = 300) -> None:
        selector = selectors.DefaultSelector()
        for name in self.out:
            selector.register(getattr(self.process, name), selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout
        while self.out[stream].count(text) < count:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"no {text!r} on {stream}: {self.out}")
            for key, _ in selector.select(timeout=1):
                self.out[key.data] += os.read(key.fileobj.fileno(), 65536)
        selector.close()

    def interrupt(self) -> None:
        time.sleep(0.5)  # as at a terminal: not between input()'s prompt and its read
        self.process.send_signal(signal.SIGINT)

    def type(self, line: bytes) -> None:
        self.process.stdin.write(line + b"\n")
        self.process.stdin.flush()


def chat_interrupt_rows() -> list[Row]:
    chat = Child(*PYORTHRUS, "chat", "-n", "400")
    chat.wait_for("stdout", b"> ")
    chat.type(b"Write a long story about a dragon.")
    chat.wait_for("stdout", b" ", count=10)
    chat.interrupt()
    chat.wait_for("stderr", b"cancelled")
    during = Row("`chat`, Ctrl-C during a reply", first_line(chat.out["stderr"].splitlines()[-1]), "(goes on)", None)
    chat.wait_for("stdout", b"> ", count=2)
    chat.interrupt()
    chat.wait_for("stderr", b"Ctrl-C again")
    once = Row("`chat`, Ctrl-C at the prompt", first_line(chat.out["stderr"].splitlines()[-1]), "(goes on)", None)
    chat.wait_for("stdout", b"> ", count=3)
    chat.interrupt()
    twice = Row("`chat`, Ctrl-C at the prompt again", "(leaves)", str(chat.process.wait(timeout=60)), None)
    return [during, once, twice]


def request(url: str, method: str, path: str, body: bytes | None = None, key: bool = True,
            timeout: float = 120) -> tuple[str, str, float]:
    """(HTTP status, what the body says, seconds) of one request."""
    host, port = url.removeprefix("http://").split(":")
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {API_KEY}"} if key else {})}
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.connect()
        try:
            connection.request(method, path, body=body, headers=headers)
        except OSError:  # a server that answers before reading the whole body (413) may close while it is sent
            pass
        response = connection.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return "-", f"no answer ({type(exc).__name__}: {exc})", time.perf_counter() - start
    finally:
        connection.close()
    return str(response.status), _said(data), time.perf_counter() - start


def _said(data: bytes) -> str:
    """The error message of a JSON error body, the usage and reply of a completion, else the body's start."""
    try:
        body = json.loads(data)
    except ValueError:
        return first_line(data)[:120]
    if not isinstance(body, dict):
        return first_line(data)[:120]
    if "error" in body:
        error = body["error"]
        return f"error: {error.get('message') if isinstance(error, dict) else error}"
    if "detail" in body:
        return f"detail: {body['detail']}"
    if "choices" in body:
        reply = body["choices"][0].get("message", {}).get("content", body["choices"][0].get("text"))
        return (f"{body['usage']['completion_tokens']} tokens, finish_reason "
                f"{body['choices'][0]['finish_reason']}: {reply!r}")
    return first_line(data)[:120]


def chat_body(**fields) -> bytes:
    """A chat request, greedy (the server's default samples, and the table would change with every run)."""
    return json.dumps({"messages": MESSAGES, "max_tokens": 8, "temperature": 0, **fields}).encode()


def started_server() -> tuple[Child, str]:
    child = Child(*PYORTHRUS, "serve", "--port", "0", env={**os.environ, "PYORTHRUS_API_KEY": API_KEY})
    child.wait_for("stdout", b"/v1")
    url = re.search(rb"(http://[\w.]+:\d+)/v1", child.out["stdout"]).group(1).decode()
    while request(url, "GET", "/health")[0] == "-":  # the banner may come before the socket listens
        time.sleep(0.2)
    return child, url


def big_body_row(url: str) -> Row:
    """A 50 MB chat request, and /health asked a second later, while it is handled."""
    body = chat_body(messages=[{"role": "user", "content": "x " * (BIG_BODY_MB * 2 ** 19)}])
    answer: list = []
    big = threading.Thread(target=lambda: answer.append(request(url, "POST", "/v1/chat/completions", body)))
    big.start()
    time.sleep(1)
    health_status, _, health_s = request(url, "GET", "/health", key=False, timeout=300)
    big.join()
    status, said, seconds = answer[0]
    return Row(f"a {BIG_BODY_MB} MB chat request", f"{said} (/health meanwhile: {health_status} in "
               f"{health_s:.1f} s)", status, seconds)


def server_rows() -> list[Row]:
    server, url = started_server()
    chat = "/v1/chat/completions"
    cases = [
        # json writes these as the NaN and Infinity literals JavaScript clients send
        ("`temperature: NaN`", "POST", chat, chat_body(temperature=float("nan")), True),
        ("`temperature: Infinity`", "POST", chat, chat_body(temperature=float("inf")), True),
        ("`temperature: 100`", "POST", chat, chat_body(temperature=100), True),
        ("`top_p: 2`", "POST", chat, chat_body(top_p=2), True),
        ("`max_completion_tokens: 5`", "POST", chat,
         json.dumps({"messages": MESSAGES, "max_completion_tokens": 5, "temperature": 0}).encode(), True),
        ("`max_tokens: 100000` (context 2048)", "POST", chat, chat_body(max_tokens=100000), True),
        ("`messages` missing", "POST", chat, b'{"max_tokens": 8}', True),
        ("`messages: []`", "POST", chat, chat_body(messages=[]), True),
        ("a lone surrogate `\"\\ud800\"` in a message", "POST", chat,
         chat_body(messages=[{"role": "user", "content": "\ud800"}]), True),
        ("malformed JSON", "POST", chat, b'{"messages": [', True),
        ("no API key", "POST", chat, chat_body(), False),
        ("`GET /docs` without the key", "GET", "/docs", None, False),
        ("`GET /nowhere`", "GET", "/nowhere", None, True),
        (f"`GET {chat}`", "GET", chat, None, True),
    ]
    rows = []
    for label, method, path, body, key in cases:
        status, said, seconds = request(url, method, path, body, key)
        rows.append(Row(label, said, status, seconds))
    rows.append(big_body_row(url))
    banner = server.out["stdout"].decode()
    rows.append(Row("the start-up banner with `PYORTHRUS_API_KEY` set",
                    "the key " + ("IS printed" if API_KEY in banner else "is not printed"), "-", None))
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=60)
    return rows


def markdown(cli: list[Row], server: list[Row]) -> str:
    def cell(text: str) -> str:
        text = text if len(text) <= SEEN_WIDTH else text[:SEEN_WIDTH - 1] + "…"
        return text.replace("|", "\\|")

    lines = []
    for title, rows, code in (("command line", cli, "exit"), ("server", server, "HTTP")):
        lines += ["", f"| {title}: input | what the user sees | {code} | s |", "|---|---|---|---:|"]
        lines += [f"| {r.input} | {cell(r.seen)} | {r.code} | "
                  f"{'-' if r.seconds is None else f'{r.seconds:.1f}'} |" for r in rows]
    return "\n".join(lines[1:]) + "\n"


def write_readme(table: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{README}: no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", action="store_true", help=f"rewrite the table in {README.name}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bad-input-") as work:
        os.chdir(work)  # relative paths in the commands, so the table shows no temporary directory
        table = markdown(cli_rows(Path(work)), server_rows())
    if args.readme:
        write_readme(table)
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
