"""The trainer (pyorthrus/train): packed training forward == reference draft view, loss goes down, resume is exact,
the checkpoint is in the upstream diff-only format and converts to an adapter GGUF."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pyorthrus import reference
from pyorthrus.testing import fixtures
from pyorthrus.convert import convert_checkpoint
from pyorthrus.errors import PyorthrusError
from pyorthrus.train import model as tmodel
from pyorthrus.train.loop import TrainConfig, train

K = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _docs(seed: int, lengths) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2000, (n,), generator=gen).tolist() for n in lengths]


def _check_against_reference(model, sequences, block_size):
    mask_id = model.cfg.mask_token_id
    batch = tmodel.pack_batch(sequences, block_size, mask_id)
    with torch.no_grad():
        kv, teacher = tmodel.ar_pass(model, batch)
        student = tmodel.diffusion_pass(model, batch, kv)
    row, worst_draft, worst_ar = 0, 0.0, 0.0
    for seq in sequences:
        for tokens, starts in seq:
            ar_logits = model.forward_ar(tokens, model.new_cache()).detach()
            for s in starts:
                cache = model.new_cache()
                if s:
                    model.forward_ar(tokens[:s], cache)
                draft = model.forward_draft([tokens[s]] + [mask_id] * (block_size - 1), cache)
                valid = min(block_size - 1, len(tokens) - 1 - s)
                draft = draft.detach()
                worst_draft = max(worst_draft, float((draft[:valid] - student[row:row + valid]).abs().max()))
                worst_ar = max(worst_ar, float((ar_logits[s:s + valid] - teacher[row:row + valid]).abs().max()))
                row += valid
    assert row == student.shape[0] == teacher.shape[0]
    # FP32 logits of size ~10: summation order (the BLAS kernels of the CPU) moves them by ~1e-4 (1.01e-4 seen on
    # an AMD EPYC); a wrong mask or block offset moves them by whole units
    assert worst_draft < 2e-4, worst_draft
    assert worst_ar < 2e-4, worst_ar


@pytest.mark.parametrize("writer", [fixtures.write_tiny_orthrus_llama, fixtures.write_tiny_orthrus_qwen3,
                                    fixtures.write_tiny_orthrus_qwen2])
def test_packed_forward_equals_reference_draft(tmp_path, writer):
    """Several documents per packed sequence, blocks at arbitrary phases, a block cut by the document end: every
    diffusion row equals the reference's forward_draft of that block with the document prefix cached."""
    model = reference.load_hf(writer(tmp_path / "ckpt")).float()  # distinct random AR and diff weights
    d1, d2, d3 = _docs(1, (30, 25, 12))
    _check_against_reference(model, [[(d1, [0, 5, 13, 27]), (d2, [3, 20])], [(d3, [1, 9]), (d2, [10])]], K)


@pytest.fixture(scope="module")
def smollm2():
    from pyorthrus.assets import smollm2_gguf

    try:
        path = smollm2_gguf()
    except PyorthrusError as exc:
        pytest.skip(str(exc))
    model = reference.load_gguf(path)
    with torch.no_grad():  # make the diff weights differ from the AR ones
        gen = torch.Generator().manual_seed(0)
        for layer in model.layers:
            for p in layer.attn_diff.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    model.cfg = reference.replace(model.cfg, mask_token_id=16)
    return model


def test_packed_forward_equals_reference_on_smollm2(smollm2):
    prompt = [1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093, 198, 504, 36247, 5251, 282, 260, 45520]
    _check_against_reference(smollm2, [[(prompt, [len(prompt) - 17, 7])]], 16)


def _tiny_data(path: Path, n_docs: int = 6, seed: int = 0) -> Path:
    gen = torch.Generator().manual_seed(seed)
    with path.open("w") as fh:
        for _ in range(n_docs):
            n = int(torch.randint(20, 40, (1,), generator=gen))
            ids = torch.randint(0, 3000, (n,), generator=gen).tolist()
            fh.write(json.dumps({"ids": ids, "n_prompt": 4}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = fixtures.write_tiny_orthrus_llama(root / "base", seed=3)
    data = _tiny_data(root / "data.jsonl")
    return root, base, data


def _cfg(tiny, out, **kw) -> TrainConfig:
    root, base, data = tiny
    args = dict(base=str(base), data=[str(data)], out=str(out), block_size=K, seq_len=80, batch_size=2, lr=1e-2,
                warmup_steps=2, max_steps=6, seed=0, save_every=2, log_every=1, progress=False)
    args.update(kw)
    return TrainConfig(**args)


def test_acceptance_weights_follow_the_leading_run():
    """Row i's weight is the student's chance of matching the AR argmax at rows 0..i-1 of its own block."""
    vocab, K = 5, 4
    batch = tmodel.pack_batch([[(list(range(10)), [0, 4]), (list(range(3)), [0])]], K, mask_id=4)
    n = batch.row_block.numel()
    assert n == 3 + 3 + 2
    gen = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(n, vocab, generator=gen), torch.randn(n, vocab, generator=gen)
    weights = tmodel.acceptance_weights(batch, teacher, student, K)
    p = student.softmax(-1).gather(-1, teacher.argmax(-1, keepdim=True)).squeeze(-1)
    expected = torch.tensor([1, p[0], p[0] * p[1], 1, p[3], p[3] * p[4], 1, p[6]])
    assert torch.allclose(weights, expected), (weights, expected)
    kl = tmodel.forward_kl(teacher, student, weights)
    per_row = [float(tmodel.forward_kl(teacher[i:i + 1], student[i:i + 1])) for i in range(n)]
    assert abs(float(kl) - float((weights * torch.tensor(per_row)).sum() / weights.sum())) < 1e-5


@pytest.mark.parametrize("precision,row_weights", [("fp32", "acceptance"), ("bf16", "acceptance"), ("fp32", "uniform")])
def test_training_lowers_loss(tiny, tmp_path, precision, row_weights):
    cfg = _cfg(tiny, tmp_path / "run", max_steps=8, eval_data=[str(tiny[2])], eval_every=8, precision=precision,
               row_weights=row_weights)
    summary = train(cfg)
    assert summary["precision"] == precision
    evals = [h for h in summary["history"] if "eval_loss" in h]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
    assert evals[-1]["eval_loss"] < 0.85 * evals[0]["eval_loss"], evals
    # Only the diff weights changed.
    trained = reference.load_hf(cfg.out, base=tiny[1])
    base = reference.load_hf(tiny[1])
    for (name, p), (_, q) in zip(trained.named_parameters(), base.named_parameters()):
        if ".attn_diff." not in name:
            assert torch.equal(p, q), name


def test_schedule_minutes_ends_on_time_with_the_lr_decayed(tiny, tmp_path):
    """--schedule-minutes: a wall-time budget instead of a step count; the cosine reaches its floor as time runs out."""
    cfg = _cfg(tiny, tmp_path / "run", max_steps=None, schedule_minutes=0.1, warmup_steps=1,
               eval_data=[str(tiny[2])], eval_every=10**6)
    summary = train(cfg)
    lrs = [h["lr"] for h in summary["history"] if "lr" in h]
    assert summary["stopped"] == "done" and summary["steps"] == summary["total_steps"] == len(lrs) >= 3
    evals = [h["step"] for h in summary["history"] if "eval_accepted" in h]
    assert evals == [0, summary["steps"]]  # held-out estimate at the start and where the budget ended the run
    assert 6.0 <= summary["wall_s"] < 6.0 + 5.0, summary["wall_s"]
    assert lrs[0] == cfg.lr and all(a >= b for a, b in zip(lrs, lrs[1:])), lrs  # peak, then never rises
    assert lrs[-1] < cfg.lr * (cfg.min_lr_ratio + 0.2 * (1 - cfg.min_lr_ratio)), lrs  # near the floor at the end


def test_packing_is_first_fit(tmp_path):
    """pack_sequences (a max-tree over free room) puts every document where a plain first-fit scan puts it."""
    from pyorthrus.train.data import Document, pack_sequences

    gen = torch.Generator().manual_seed(1)
    docs = [Document(list(range(int(n)))) for n in torch.randint(3, 200, (3000,), generator=gen)]
    order = list(range(len(docs)))
    random.Random(7).shuffle(order)
    seqs, room = [], []
    for i in order:
        n = len(docs[i].ids)
        j = next((j for j, free in enumerate(room) if free >= n), len(seqs))
        if j == len(seqs):
            seqs.append([])
            room.append(256)
        seqs[j].append(docs[i])
        room[j] -= n
    assert pack_sequences(docs, 256, seed=7) == seqs


def test_resume_continues_exactly(tiny, tmp_path):
    straight = train(_cfg(tiny, tmp_path / "straight"))

    def interrupt(rec):
        if rec["step"] == 3:
            raise KeyboardInterrupt

    first = train(_cfg(tiny, tmp_path / "resumed"), on_log=interrupt)
    assert first["stopped"] == "interrupted" and first["steps"] == 3
    state = torch.load(tmp_path / "resumed" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 3
    with pytest.raises(PyorthrusError, match="already holds a training run"):
        train(_cfg(tiny, tmp_path / "resumed"))
    second = train(_cfg(tiny, tmp_path / "resumed"), resume=True)
    assert second["steps"] == straight["steps"] == 6
    assert second["tokens"] == straight["tokens"]
    a = reference.read_hf_tensors(tmp_path / "straight")
    b = reference.read_hf_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_checkpoint_format_and_conversion(tiny, tmp_path):
    import gguf

    out = tmp_path / "run"
    train(_cfg(tiny, out, max_steps=2))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "orthrus" and config["architectures"] == ["OrthrusLM"]
    assert config["block_size"] == K and config["mask_token_id"] == fixtures.QWEN3_MASK_TOKEN_ID
    assert config["base_model_type"] == "llama"
    tensors = reference.read_hf_tensors(out)
    n_layers = config["num_hidden_layers"]
    expected = {f"model.layers.{i}.self_attn.{p}_diff.weight" for i in range(n_layers)
                for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert set(tensors) == expected

    adapter = tmp_path / "adapter.gguf"
    convert_checkpoint(out, adapter_out=adapter, outtype="f32", progress=False)
    reader = gguf.GGUFReader(str(adapter))
    assert reference.gguf_field(reader, "adapter.type") == "orthrus"
    assert reference.gguf_field(reader, "orthrus.diffusion.block_size") == K
    cfg = reference.config_from_hf(config)
    got = {t.name: t for t in reader.tensors}
    assert len(got) == len(expected)
    for i in range(n_layers):
        for proj, gname in (("q_proj", "attn_q_diff"), ("k_proj", "attn_k_diff"), ("o_proj", "attn_output_diff")):
            name = f"blk.{i}.{gname}.weight"
            value = reference.gguf_tensor_f32(got[name])
            heads = reference.llama_qk_permute_heads(cfg, name)
            if heads:
                value = reference.unpermute_qk_rows(value, heads)
            np.testing.assert_array_equal(value, tensors[f"model.layers.{i}.self_attn.{proj}_diff.weight"].numpy())


def _one_step(base, tmp_path) -> tuple[Path, set[str]]:
    """Train one step on `base`; the run directory and the names of the tensors it wrote."""
    data = _tiny_data(tmp_path / "d.jsonl", n_docs=2)
    out = tmp_path / "run"
    train(TrainConfig(base=str(base), data=[str(data)], out=str(out), block_size=K, seq_len=64, batch_size=1,
                      max_steps=1, progress=False))
    return out, set(reference.read_hf_tensors(out))


def test_qwen3_base_trains_norms(tmp_path):
    _, names = _one_step(fixtures.write_tiny_orthrus_qwen3(tmp_path / "base", seed=1), tmp_path)
    assert "model.layers.0.self_attn.q_norm_diff.weight" in names and "model.layers.1.self_attn.k_norm_diff.weight" in names


def test_qwen2_base_trains_its_qkv_biases(tmp_path):
    out, names = _one_step(fixtures.write_tiny_orthrus_qwen2(tmp_path / "base", seed=1), tmp_path)
    assert {f"model.layers.1.self_attn.{p}_proj_diff.bias" for p in "qkv"} <= names
    assert "model.layers.1.self_attn.o_proj_diff.bias" not in names
    assert convert_checkpoint(out, adapter_out=tmp_path / "a.gguf", progress=False)["diff_tensors"] == 2 * 7


def test_user_errors(tiny, tmp_path):
    with pytest.raises(PyorthrusError, match="does not exist"):
        train(_cfg(tiny, tmp_path / "a", base=str(tmp_path / "nope.gguf")))
    with pytest.raises(PyorthrusError, match="nothing to resume"):
        train(_cfg(tiny, tmp_path / "b"), resume=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(PyorthrusError, match="bad.jsonl:1"):
        train(_cfg(tiny, tmp_path / "c", data=[str(bad)]))


def test_cli_parses_and_runs(tiny, tmp_path, capsys):
    from pyorthrus.train import cli

    root, base, data = tiny
    rc = cli.main(["--base", str(base), "--data", str(data), "--out", str(tmp_path / "o"), "-K", "4",
                   "--max-steps", "1", "--seq-len", "64", "--batch-size", "1", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["mask_token_id"] == fixtures.QWEN3_MASK_TOKEN_ID


def test_init_from_an_adapter_gguf(smollm2_path, tiny, tmp_path):
    """`--init-from ADAPTER.gguf` continues training an adapter (the shipped one here): with lr 0 the checkpoint holds
    its dequantized weights in the HF layout (Q/K rows un-permuted), not the AR initialisation."""
    from pyorthrus import assets
    from pyorthrus.train.loop import initial_diff_tensors

    adapter = assets.default_adapter()
    out = tmp_path / "ckpt"
    train(TrainConfig(base=str(smollm2_path), data=[str(_tiny_data(tmp_path / "data.jsonl"))], out=str(out),
                      block_size=16, seq_len=64, batch_size=1, lr=0.0, warmup_steps=1, max_steps=1,
                      init_from=str(adapter), progress=False))
    got = reference.read_hf_tensors(out)
    want = tmodel.diff_state_dict(reference.load_gguf(smollm2_path, adapter))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    name = "model.layers.0.self_attn.q_proj_diff.weight"
    assert not torch.equal(got[name], tmodel.diff_state_dict(reference.load_gguf(smollm2_path))[name])
    assert json.loads((out / "config.json").read_text())["orthrus_training"]["init"]["init_from"] == str(adapter)
    with pytest.raises(PyorthrusError, match="needs a GGUF --base"):
        initial_diff_tensors(adapter, tiny[1])


def test_init_from_checkpoint(tiny, tmp_path):
    first = tmp_path / "first"
    train(_cfg(tiny, first, max_steps=2, keep_every=1))
    second = tmp_path / "second"
    train(_cfg(tiny, second, max_steps=1, lr=0.0, warmup_steps=1, init_from=str(first)))  # lr 0: weights unchanged
    a, b = reference.read_hf_tensors(first), reference.read_hf_tensors(second)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # --keep-every: each step's weights stay in first/stepNNNNNN (the last equals the run's, the first differs)
    kept = [reference.read_hf_tensors(first / f"step00000{n}") for n in (1, 2)]
    assert all(torch.equal(a[k], kept[1][k]) for k in a) and not all(torch.equal(a[k], kept[0][k]) for k in a)
    assert json.loads((first / "step000001" / "config.json").read_text())["orthrus_training"]["steps"] == 1
    config = json.loads((second / "config.json").read_text())
    assert config["orthrus_training"]["init"]["steps"] == 2


def test_gpu_gen_batched_greedy_equals_the_reference(smollm2_path, tmp_path):
    """bench/gpu_gen.py (bench/gpu_train.sh's sampler) decodes left-padded prompts of different lengths in one batch
    with a static KV cache; at temperature 0 each answer is the reference's one-sequence greedy answer. Runs on the
    CPU here; the same code runs on the GPU."""
    import subprocess
    import sys

    import llama_cpp

    vocab = llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)
    questions = ["Hi!", "Name three colours of the rainbow, one per line.",
                 "Write a Python function that returns the square of a number, and explain it in one sentence."]
    prompts = tmp_path / "prompts.jsonl"
    with prompts.open("w") as fh:
        for i, q in enumerate(questions):
            text = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
            ids = vocab.tokenize(text.encode(), add_bos=False, special=True)
            fh.write(json.dumps({"kind": "chat", "source": "test", "index": i, "ids": ids, "n_prompt": len(ids)}) + "\n")
    out = tmp_path / "answers.jsonl"
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(repo / "bench" / "gpu_gen.py"), "--base", str(smollm2_path), "--prompts",
                    str(prompts), "--out", str(out), "--samples", "1", "--temperature", "0", "--max-tokens", "12",
                    "--batch", "3", "--device", "cpu"], check=True, capture_output=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    model = reference.load_gguf(smollm2_path).eval()
    eos = {vocab.token_eos(), *vocab.tokenize(b"<|im_end|>", add_bos=False, special=True)}
    for rec in records:
        prompt, answer = rec["ids"][:rec["n_prompt"]], rec["ids"][rec["n_prompt"]:]
        expected, _ = reference.greedy_generate(model, prompt, 12)
        cut = next((i + 1 for i, t in enumerate(expected) if t in eos), len(expected))
        assert answer == expected[:cut], (rec["index"], answer, expected)
        assert rec["finish"] == ("stop" if answer[-1] in eos else "length")
