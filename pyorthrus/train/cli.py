"""`pyorthrus train`: train the Orthrus diffusion attention weights of a frozen base (forward-KL self-distillation).

Writes a diff-only Orthrus checkpoint (upstream HF layout) that `pyorthrus convert CKPT --adapter-out A.gguf`
turns into an adapter GGUF. Also runs as `python -m pyorthrus.train.cli ...`.
"""
from __future__ import annotations

import argparse
import json
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, metavar="BASE",
                        help="base model: a GGUF file (any quantization; dequantized to float) or an HF directory")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help="training data: .jsonl ({\"ids\": [...]} or {\"text\": ...}, optional \"n_prompt\") "
                             "or plain text files")
    parser.add_argument("--out", required=True, metavar="DIR", help="output checkpoint directory")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--block-size", "-K", type=int, default=16, help="diffusion block size K (default 16)")
    parser.add_argument("--tokens", type=int, default=200_000, help="token budget; sets the step count (default 200k)")
    parser.add_argument("--max-steps", type=int, default=None, help="number of steps (overrides --tokens)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (and checkpoint) after this much wall time; --resume continues")
    parser.add_argument("--schedule-minutes", type=float, default=None, metavar="M",
                        help="a fixed time budget instead of a step count (e.g. a lent GPU): the learning-rate "
                             "schedule runs over M minutes of training wall time, then training ends")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW; default 5e-4)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4, help="packed sequences per step (default 4)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per packed sequence (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 on CUDA/MPS and on CPUs with AMX/AVX512-BF16 (frozen weights stored in "
                             "bf16, trained weights fp32 under autocast), else fp32")
    parser.add_argument("--mask-token-id", type=int, default=None,
                        help="mask token (default: the base's, else a reserved special token such as <empty_output>)")
    parser.add_argument("--init-from", metavar="CKPT", default=None,
                        help="start from these diff weights instead of the AR weights (new schedule): a diff-only "
                             "checkpoint directory, or an adapter GGUF for a GGUF --base (e.g. the shipped one)")
    parser.add_argument("--row-weights", choices=["acceptance", "uniform"], default="acceptance",
                        help="acceptance (default): weigh draft row i's KL by the chance that rows 0..i-1 were "
                             "accepted, so far rows that rarely reach verification do not dominate (+0.16 tokens "
                             "per cycle at K=16 on SmolLM2, MODEL_CARD.md); uniform: every row alike (the paper)")
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    parser.add_argument("--keep-every", type=int, default=None, metavar="N",
                        help="also keep the weights of every N-th step in OUT/stepNNNNNN (to measure a growth curve)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--eval-data", nargs="*", default=[], metavar="FILE",
                        help="held-out data for the periodic acceptance estimate")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print a JSON summary; no progress bar")


def run(args: argparse.Namespace) -> int:
    from .loop import TrainConfig, train

    cfg = TrainConfig(base=str(args.base), data=[str(p) for p in args.data], out=str(args.out),
                      block_size=args.block_size, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                      warmup_steps=args.warmup_steps, tokens=args.tokens, max_steps=args.max_steps, seed=args.seed,
                      device=args.device, precision=args.precision, save_every=args.save_every,
                      log_every=args.log_every, eval_data=[str(p) for p in args.eval_data],
                      eval_every=args.eval_every, max_minutes=args.max_minutes,
                      schedule_minutes=args.schedule_minutes, mask_token_id=args.mask_token_id,
                      init_from=args.init_from, keep_every=args.keep_every, row_weights=args.row_weights,
                      threads=args.threads, progress=not args.json)
    summary = train(cfg, resume=args.resume)
    if args.json:
        summary = {k: v for k, v in summary.items() if k != "history"}
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['stopped']}: {summary['steps']}/{summary['total_steps']} steps, {summary['tokens']} tokens, "
              f"{summary['wall_s']:.0f} s; loss {summary['loss']:.4f}, accepted drafts/block "
              f"{summary['accepted']:.2f}; checkpoint {summary['out']}")
    return 0


def main(argv=None) -> int:
    from ..cli import main as pyorthrus_main

    return pyorthrus_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
