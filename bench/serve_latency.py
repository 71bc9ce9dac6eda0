"""`pyorthrus serve` under load, measured end to end against a real server subprocess (embedded SmolLM2 + adapter):

1. an oversized request body (50 MB, once with Content-Length, once chunked): the time to its answer, the server's
   RSS during it (sampled from /proc every 10 ms) and the latency of /health polled meanwhile;
2. a growing 5-turn chat conversation, streamed and greedy: per turn the prompt tokens, how many of them the cache
   already held (the `orthrus` statistics' n_reused), the time to the first text chunk and to the end; then turn 5's
   messages once more behind a different system message, so that no prefix is reused (the cold cost of that turn).

    python bench/serve_latency.py                      # prints the tables
    python bench/serve_latency.py --out results.json   # and writes them
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import httpx

QUESTIONS = ["Tell me about the history of Paris.", "What are its most famous museums?",
             "Which one should I visit first, and why?", "How do I get there from the Eiffel Tower?",
             "Summarise our conversation in three sentences."]
BIG_BYTES = 50 * 1000 * 1000


def start_server(n_ctx: int, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "pyorthrus", "serve", "--port", "0", "-t", str(threads),
                                "-c", str(n_ctx)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = process.stdout.readline()
    if " at http" not in first:
        process.kill()
        raise SystemExit(f"the server did not start: {first!r}")
    url = first.split(" at ", 1)[1].split("/v1", 1)[0]
    for _ in range(100):
        try:
            httpx.get(f"{url}/health", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server never answered /health")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def while_running(action, pid: int, url: str) -> dict:
    """action()'s seconds, with the server's RSS and /health latency sampled meanwhile."""
    done, rss, health = threading.Event(), [], []

    def sample_rss():
        while not done.is_set():
            rss.append(rss_mb(pid))
            time.sleep(0.01)

    def poll_health():
        while not done.is_set():
            start = time.perf_counter()
            httpx.get(f"{url}/health", timeout=60)
            health.append(time.perf_counter() - start)
            time.sleep(0.02)

    before = rss_mb(pid)
    threads = [threading.Thread(target=sample_rss), threading.Thread(target=poll_health)]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    try:
        status = action()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        for thread in threads:
            thread.join()
    return {"status": status, "seconds": round(seconds, 3), "rss_before_mb": round(before),
            "rss_peak_mb": round(max(rss, default=before)), "rss_after_mb": round(rss_mb(pid)),
            "health_polls": len(health), "health_max_ms": round(max(health, default=0) * 1e3)}


def oversized_body(process: subprocess.Popen, url: str) -> dict:
    payload = json.dumps({"messages": [{"role": "user", "content": "word " * (BIG_BYTES // 5)}]}).encode()
    headers = {"Content-Type": "application/json"}

    def send(content):
        return lambda: httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers,
                                  timeout=600).status_code

    chunks = (payload[i:i + 2 ** 20] for i in range(0, len(payload), 2 ** 20))
    return {"content_length": while_running(send(payload), process.pid, url),
            "chunked": while_running(send(chunks), process.pid, url)}


def streamed_turn(url: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed greedy chat request: its reply, seconds to the first text chunk and to the end, statistics."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start, first, text, last = time.perf_counter(), None, [], None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            piece = chunk["choices"][0]["delta"].get("content")
            if piece and first is None:
                first = time.perf_counter() - start
            text.append(piece or "")
            last = chunk
    stats = last["orthrus"]
    return {"reply": "".join(text), "prompt_tokens": stats["n_prompt"], "reused_tokens": stats.get("n_reused"),
            "completion_tokens": stats["n_generated"], "first_token_s": round(first or 0.0, 3),
            "total_s": round(time.perf_counter() - start, 3)}


def conversation(url: str, max_tokens: int) -> dict:
    messages, turns = [], []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        turn = streamed_turn(url, messages, max_tokens)
        messages.append({"role": "assistant", "content": turn.pop("reply")})
        turns.append(turn)
    cold = [{"role": "system", "content": "You are a concise travel guide."}, *messages[:-1]]
    cold_turn = streamed_turn(url, cold, max_tokens)
    cold_turn.pop("reply")
    return {"turns": turns, "turn_5_cold": cold_turn,
            "turn_5_over_turn_1": round(turns[-1]["first_token_s"] / turns[0]["first_token_s"], 2)}


def report(results: dict) -> str:
    lines = ["oversized body (50 MB):", "| body | status | answer s | RSS before / peak / after MB | /health max ms |",
             "|---|---|---|---|---|"]
    for kind, row in results["oversized"].items():
        lines.append(f"| {kind} | {row['status']} | {row['seconds']} | {row['rss_before_mb']} / {row['rss_peak_mb']} "
                     f"/ {row['rss_after_mb']} | {row['health_max_ms']} ({row['health_polls']} polls) |")
    lines += ["", "growing conversation (streamed, greedy):",
              "| turn | prompt tokens | reused | first token s | total s | completion tokens |",
              "|---|---|---|---|---|---|"]
    conv = results["conversation"]
    for number, turn in [*enumerate(conv["turns"], 1), ("5 cold", conv["turn_5_cold"])]:
        lines.append(f"| {number} | {turn['prompt_tokens']} | {turn['reused_tokens']} | {turn['first_token_s']} | "
                     f"{turn['total_s']} | {turn['completion_tokens']} |")
    lines.append(f"turn 5 / turn 1 first-token latency: {conv['turn_5_over_turn_1']}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per reply of the conversation")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    process, url = start_server(args.ctx_size, args.threads)
    try:
        results = {"oversized": oversized_body(process, url), "conversation": conversation(url, args.max_tokens)}
    finally:
        process.terminate()
        process.wait(timeout=60)
    print(report(results))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
