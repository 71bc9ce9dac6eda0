"""Issue 33, the command line under abuse: every bad value is refused in one line that names the flag (before the
model loads), bad text, outputs and missing packages end in one line instead of a traceback, a reader that leaves a
pipe ends the run quietly, plain runs print no llama.cpp log, and `chat` survives Ctrl-C and stray commands. Each
case runs the real `python -m pyorthrus` in a child process (the embedded model where one is loaded)."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyorthrus import assets
from pyorthrus.cli_options import stats_footer
from pyorthrus.stats import GenerationStats
from pyorthrus.testing.bad_values import BAD_VALUES, VERBS

# a model path that is never read: a flag error that names the flag, not this file, fired before any loading
NO_MODEL = ["-m", "/nonexistent/never-loaded.gguf"]
BAD_CASES = [(verb, flag, value) for verb, (_, flags) in VERBS.items() for flag, value in BAD_VALUES if flag in flags]


def pyorthrus(*args, stdin: bytes = b"", timeout: float = 300, python: list[str] | None = None):
    return subprocess.run([*(python or [sys.executable, "-m", "pyorthrus"]), *args], input=stdin,
                          capture_output=True, timeout=timeout)


def one_error(run: subprocess.CompletedProcess, verb: str) -> str:
    """The one stderr line of a refused run (exit 1, no traceback), without its `pyorthrus VERB: error: `."""
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 1 and "Traceback" not in err, err
    lines = err.splitlines()
    prefix = f"pyorthrus {verb}: error: "
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0].removeprefix(prefix)


@pytest.mark.parametrize("verb,flag,value", BAD_CASES)
def test_a_bad_value_is_refused_in_one_line_naming_the_flag(verb, flag, value):
    needs, _ = VERBS[verb]
    # -k is known to be out of range only once the model says its trained K; every other value fails first
    model = NO_MODEL if flag != "-k" and verb != "demo" else []
    assert one_error(pyorthrus(verb, *needs, *model, flag, value), verb).startswith(f"{flag} {value}: ")


def test_bench_takes_its_block_sizes_from_block_sizes():
    assert one_error(pyorthrus("bench", "--block-sizes", "4,32", "--no-peer"), "bench").startswith(
        "--block-sizes 32: must be in 2 ... 16")


def test_command_line_bytes_that_are_not_utf8_are_refused():
    assert one_error(pyorthrus(b"generate", b"-p", b"caf\xe9", *NO_MODEL), "generate").startswith(
        "-p: not UTF-8 text")


def test_train_without_torch_helps_and_then_says_what_to_install(tmp_path):
    poisoned = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from pyorthrus.cli import main; "
                                      "sys.exit(main())"]
    helped = pyorthrus("train", "--help", python=poisoned)
    assert helped.returncode == 0 and b"usage: pyorthrus train" in helped.stdout and b"Traceback" not in helped.stderr
    (tmp_path / "data.jsonl").write_text("")
    run = pyorthrus("train", "--base", str(tmp_path / "base.gguf"), "--data", str(tmp_path / "data.jsonl"), "--out",
                    str(tmp_path / "out"), python=poisoned)
    assert one_error(run, "train") == (
        "needs the Python package torch, which is not installed (pip install 'pyorthrus[train]')")


def unwritable_outputs(tmp_path: Path) -> list[tuple[Path, str]]:
    """(output path, what the error says) for a directory that is missing, one that is a file, one that takes no
    files (/proc, on Linux)."""
    regular = tmp_path / "a-file"
    regular.write_text("")
    cases = [(tmp_path / "missing" / "dir" / "out", "does not exist"), (regular / "out", "is not a directory")]
    return cases + ([(Path("/proc/out"), "cannot create files in /proc")] if Path("/proc/self").exists() else [])


def test_convert_refuses_an_output_it_cannot_write(tmp_path):
    for out, says in unwritable_outputs(tmp_path):
        # the output is checked before the checkpoint is read: none is needed
        line = one_error(pyorthrus("convert", str(tmp_path), "--adapter-out", f"{out}.gguf"), "convert")
        assert says in line, line


def test_bench_refuses_an_output_it_cannot_write_before_the_run(tmp_path):
    for out, says in unwritable_outputs(tmp_path):
        line = one_error(pyorthrus("bench", *NO_MODEL, "--out", str(out)), "bench")  # not the model's error
        assert line.startswith(f"{out}: ") and says in line, line
    assert not (tmp_path / "missing").exists()  # no directory made for a typo


@pytest.mark.parametrize("verb", ["generate", "inspect"])
def test_a_reader_that_leaves_the_pipe_ends_the_run_quietly(verb):
    args = ["-p", "Count from 1 to 100.", "-n", "64"] if verb == "generate" else [str(assets.default_adapter())]
    child = subprocess.Popen([sys.executable, "-m", "pyorthrus", verb, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # the reader leaves before the output comes (`| head -1` once it has its line)
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 141 and "Traceback" not in err and "Broken pipe" not in err, err


def test_context_errors_say_which_flag_to_change():
    line = one_error(pyorthrus("generate", "-p", "Hi", "-n", "5000"), "generate")
    assert "give -c" in line and "or -n" in line, line
    # -c too small for a decode round of the trained K: the user set -c, never a batch size
    line = one_error(pyorthrus("generate", "-p", "Hi", "-c", "8"), "generate")
    assert line.startswith("-c 8: "), line


def test_model_errors_are_in_command_line_words(tmp_path, smollm2_path):
    line = one_error(pyorthrus("generate", "-p", "Hi", "-m", str(smollm2_path)), "generate")  # no adapter
    assert "-a ADAPTER" in line and "--mode ar" in line, line
    assert "is a directory" in one_error(pyorthrus("generate", "-p", "Hi", "-m", str(tmp_path)), "generate")


def test_a_plain_run_prints_no_llama_log():
    # with flash attention the freed context's compute buffer differs from its estimate: llama.cpp warns
    run = pyorthrus("generate", "-p", "Hi", "-n", "8", "--flash-attn")
    lines = run.stderr.decode().splitlines()
    assert run.returncode == 0 and len(lines) == 1 and lines[0].startswith("["), lines  # the stats footer alone


def test_generate_applies_the_chat_template_unless_raw():
    question = ["-p", "What is the capital of France?", "-n", "12", "--mode", "ar"]
    chat = pyorthrus("generate", *question)
    assert chat.returncode == 0 and "Paris" in chat.stdout.decode()
    assert pyorthrus("generate", "--chat", *question).stdout == chat.stdout  # the old opt-in, still accepted
    assert pyorthrus("generate", "--raw", *question).stdout != chat.stdout


def auto_stats(n_generated: int, n_cycles: int, n_ar_steps: int) -> GenerationStats:
    return GenerationStats("orthrus", "auto", n_generated=n_generated, n_cycles=n_cycles, n_ar_steps=n_ar_steps,
                           t_total_s=1.0, auto_note="a K=4 cycle costs 6.1 AR steps here")


def test_the_auto_footer_says_what_auto_did():
    assert stats_footer(auto_stats(64, 0, 64)) == (
        "[64 tokens, 64.0 tok/s, mode orthrus, K=auto: all 64 tokens as AR steps: a K=4 cycle costs 6.1 AR steps "
        "here]")
    mixed = stats_footer(auto_stats(64, 10, 24))
    assert "K=auto: 24 of 64 tokens as AR steps" in mixed and "4.00 tokens/cycle over 10 cycles" in mixed
    assert "over 0 cycles" not in stats_footer(GenerationStats("orthrus", 16))  # ended at once


class Chat:
    """`pyorthrus chat` in a child process: type lines, send Ctrl-C, read what it shows."""

    def __init__(self, *args):
        self.child = subprocess.Popen([sys.executable, "-m", "pyorthrus", "chat", *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = {"stdout": b"", "stderr": b""}

    def interrupt(self) -> None:
        """Ctrl-C, a moment after what was waited for: a signal that lands between input()'s prompt and its read
        waits for the next line (as at a terminal, where no one types that fast)."""
        time.sleep(0.5)
        self.child.send_signal(signal.SIGINT)

    def type(self, line: bytes) -> None:
        self.child.stdin.write(line + b"\n")
        self.child.stdin.flush()

    def wait_for(self, stream: str, text: bytes, count: int = 1, timeout: float = 120) -> None:
        """Read both pipes until `stream` shows `text` `count` times."""
        selector = selectors.DefaultSelector()
        for name in self.out:
            selector.register(getattr(self.child, name), selectors.EVENT_READ, name)
        deadline = time.monotonic() + timeout
        while self.out[stream].count(text) < count:
            assert time.monotonic() < deadline, self.out
            for key, _ in selector.select(timeout=1):
                self.out[key.data] += os.read(key.fileobj.fileno(), 4096)
        selector.close()

    def finish(self, stdin: bytes = b"") -> tuple[int, str]:
        out, err = self.child.communicate(stdin, timeout=120)
        self.out["stdout"] += out
        self.out["stderr"] += err
        return self.child.returncode, self.out["stderr"].decode(errors="replace")


def test_chat_commands_say_what_they_did():
    code, err = Chat("-n", "8").finish(b"/bogus\n/reset\n/stats\n" + "caf\xe9\n".encode("latin-1") + b"/quit\n")
    assert code == 0 and "Traceback" not in err, err
    assert "unknown command /bogus; commands:" in err and "conversation cleared" in err and "no reply yet" in err
    assert "pyorthrus chat: error: that line: not UTF-8 text" in err  # refused; the chat goes on to /quit


def test_ctrl_c_cancels_a_chat_reply_and_keeps_the_conversation():
    chat = Chat("-n", "400")
    chat.type(b"Hi")
    chat.wait_for("stdout", b"> ", count=2)  # the first reply is complete
    chat.type(b"Write a long story about a dragon.")
    chat.wait_for("stdout", b" ", count=chat.out["stdout"].count(b" ") + 5)  # the second is under way
    chat.interrupt()
    chat.wait_for("stderr", b"reply cancelled")
    code, err = chat.finish(b"/stats\n/quit\n")
    assert code == 0 and "Traceback" not in err, err
    # /stats shows the first reply's footer: the cancelled reply was not kept, the conversation was
    assert err.splitlines()[-1].startswith("[") and "no reply yet" not in err, err


def test_ctrl_c_at_the_prompt_hints_once_and_quits_twice():
    chat = Chat()
    chat.wait_for("stdout", b"> ")
    chat.interrupt()
    chat.wait_for("stderr", b"Ctrl-C again")
    chat.wait_for("stdout", b"> ", count=2)
    chat.interrupt()
    assert chat.child.wait(timeout=60) == 0  # stdin still open: the second Ctrl-C, not an end of input, quit
    assert "Traceback" not in chat.finish()[1]
