"""The PyTorch reference (pyorthrus.reference) against transformers, and its decoding invariants."""
from __future__ import annotations

import inspect
import json
from dataclasses import replace

import pytest
import torch

from pyorthrus import reference
from pyorthrus.testing import fixtures
from pyorthrus.errors import PyorthrusError

transformers = pytest.importorskip("transformers")

ORTHRUS_KEYS = ("model_type", "architectures", "block_size", "mask_token_id", "base_model_type")
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def qwen3_ckpt(tmp_path_factory):
    return fixtures.write_tiny_orthrus_qwen3(tmp_path_factory.mktemp("qwen3"), seed=1)


@pytest.fixture(scope="session")
def llama_ckpt(tmp_path_factory):
    # Untied output here (the Qwen3 fixture is tied) so both lm_head paths are compared with transformers.
    return fixtures.write_tiny_orthrus_llama(tmp_path_factory.mktemp("llama"), seed=2, tie_word_embeddings=False)


@pytest.fixture(scope="session")
def llama_bias_ckpt(tmp_path_factory):
    return fixtures.write_tiny_orthrus_llama(tmp_path_factory.mktemp("llama-bias"), seed=3, attention_bias=True)


@pytest.fixture(scope="session")
def smollm2_model():
    from pyorthrus import assets

    model = reference.load_gguf(assets.smollm2_gguf())  # no diff tensors: diff slots copy AR (the recipe's init)
    model.cfg = replace(model.cfg, mask_token_id=0)  # SmolLM2 has no mask token; any row will do for this test
    return model


def hf_model(ckpt, diffusion_weights: bool = False):
    """transformers' own model for a fixture checkpoint; with `diffusion_weights`, the `_diff` weights take the
    place of the AR attention weights (upstream's diffusion pass is exactly that attention with another mask)."""
    config = json.loads((ckpt / "config.json").read_text())
    base = config.get("base_model_type", "qwen3")
    for key in ORTHRUS_KEYS:
        config.pop(key, None)
    config_cls, model_cls = {"qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
                             "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[base]
    hf_config = config_cls(**config)
    hf_config._attn_implementation = "eager"
    tensors = {k: v.float() for k, v in reference.read_hf_tensors(ckpt).items()}
    state = {k: v for k, v in tensors.items() if "_diff." not in k}
    if diffusion_weights:
        state.update({k.replace("_diff.", "."): v for k, v in tensors.items() if "_diff." in k})
    model = model_cls(hf_config).float().eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return model


def cache_kwarg(model) -> str:
    """transformers renamed `past_key_values` to `cache` in 5.x; use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def token_ids(n: int, seed: int, vocab: int = fixtures.QWEN3_MASK_TOKEN_ID) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ckpt_name", ["qwen3_ckpt", "llama_ckpt", "llama_bias_ckpt"])
def test_ar_view_equals_transformers(ckpt_name, request):
    ckpt = request.getfixturevalue(ckpt_name)
    model, hf = reference.load_hf(ckpt), hf_model(ckpt)
    ids = token_ids(24, seed=3)
    with torch.no_grad():
        expected = hf(ids[None]).logits[0]
        full = model.forward_ar(ids, model.new_cache())
        assert (full - expected).abs().max() <= TOLERANCE
        # With a cache: same chunking on both sides (chunked and one-shot passes differ in float32 rounding).
        out1 = hf(ids[None, :16], use_cache=True)
        out2 = hf(ids[None, 16:], **{cache_kwarg(hf): out1.past_key_values})
        cache = model.new_cache()
        mine = torch.cat([model.forward_ar(ids[:16], cache), model.forward_ar(ids[16:], cache)])
        assert len(cache) == 24
        assert (mine - torch.cat([out1.logits[0], out2.logits[0]])).abs().max() <= TOLERANCE


@pytest.mark.parametrize("ckpt_name", ["qwen3_ckpt", "llama_ckpt", "llama_bias_ckpt"])
def test_draft_view_equals_transformers_with_block_mask(ckpt_name, request):
    """Draft = diff weights over [x_s, MASK...] at s..s+K-1, attending to all AR K/V of the prefix and the whole
    block (no causal mask), cache untouched. Built independently from transformers: the AR model fills a cache, a
    second model holding the diff weights runs the block on it with an all-visible 4-D mask."""
    ckpt = request.getfixturevalue(ckpt_name)
    model, hf_ar, hf_diff = reference.load_hf(ckpt), hf_model(ckpt), hf_model(ckpt, diffusion_weights=True)
    prefix, k = token_ids(12, seed=4), 8
    block = torch.tensor([int(token_ids(1, seed=5))] + [fixtures.QWEN3_MASK_TOKEN_ID] * (k - 1))
    with torch.no_grad():
        hf_cache = hf_ar(prefix[None], use_cache=True).past_key_values
        positions = torch.arange(len(prefix), len(prefix) + k)[None]
        visible = torch.zeros(1, 1, k, len(prefix) + k)
        expected = hf_diff(block[None], attention_mask=visible, position_ids=positions,
                           **{cache_kwarg(hf_diff): hf_cache}).logits[0]
        cache = model.new_cache()
        model.forward_ar(prefix, cache)
        draft = model.forward_draft(block, cache)
    assert len(cache) == len(prefix)
    assert (draft - expected).abs().max() <= TOLERANCE
    # The check has teeth: a causal block (what an AR-style graph would compute) gives other logits.
    with torch.no_grad():
        hf_cache = hf_ar(prefix[None], use_cache=True).past_key_values
        causal = hf_diff(block[None], position_ids=positions, **{cache_kwarg(hf_diff): hf_cache}).logits[0]
    assert (draft[:-1] - causal[:-1]).abs().max() > 1e-3


def test_draft_of_one_token_with_ar_weights_is_the_ar_step(qwen3_ckpt):
    """A 1-token block sees exactly what a causal step sees, so with diff := AR weights the views agree."""
    model = reference.load_hf(qwen3_ckpt)
    model.init_diffusion_from_ar()
    ids = token_ids(10, seed=6)
    cache = model.new_cache()
    model.forward_ar(ids[:-1], cache)
    draft = model.forward_draft(ids[-1:], cache)
    assert torch.equal(draft, model.forward_ar(ids[-1:], cache))


@pytest.mark.parametrize("ckpt_name", ["qwen3_ckpt", "llama_ckpt"])
@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_greedy_orthrus_equals_greedy_ar(ckpt_name, block_size, request):
    model = reference.load_hf(request.getfixturevalue(ckpt_name))
    for seed in range(3):
        prompt = token_ids(5 + seed, seed=10 + seed).tolist()
        ar_tokens, ar_stats = reference.greedy_generate(model, prompt, 30)
        tokens, stats = reference.greedy_generate(model, prompt, 30, block_size=block_size)
        assert tokens == ar_tokens
        assert ar_stats.accepted == [] and len(stats.accepted) == stats.draft_passes == stats.ar_passes
        assert all(0 <= a <= block_size - 1 for a in stats.accepted)


def test_greedy_orthrus_equals_greedy_ar_on_smollm2(smollm2_model):
    """The real base (SmolLM2-135M Q4_1, dequantized) with diff := AR weights: drafts get accepted, output equal."""
    # ChatML: "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    prompt = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
    ar_tokens, _ = reference.greedy_generate(smollm2_model, prompt, 24)
    tokens, stats = reference.greedy_generate(smollm2_model, prompt, 24, block_size=4)
    assert tokens == ar_tokens
    assert sum(stats.accepted) > 0  # at init the diffusion view still predicts some continuation tokens


def test_greedy_stops_mid_block(qwen3_ckpt):
    model = reference.load_hf(qwen3_ckpt)
    prompt = token_ids(6, seed=20).tolist()
    ar_tokens, _ = reference.greedy_generate(model, prompt, 30)
    stop = ar_tokens[9]
    first = ar_tokens.index(stop)
    tokens, _ = reference.greedy_generate(model, prompt, 30, block_size=8, stop_ids=[stop])
    assert tokens == ar_tokens[: first + 1]
    tokens, _ = reference.greedy_generate(model, prompt, 7, block_size=8)
    assert tokens == ar_tokens[:7]


def test_init_diffusion_from_ar_copies_every_attention_weight(qwen3_ckpt):
    model = reference.load_hf(qwen3_ckpt)
    model.init_diffusion_from_ar()
    for layer in model.layers:
        for name, value in layer.attn.state_dict().items():
            assert torch.equal(layer.attn_diff.state_dict()[name], value)


def test_plain_base_checkpoint_gets_diffusion_weights_from_ar(qwen3_ckpt, tmp_path):
    """A checkpoint without `_diff` tensors (a plain base) loads with diff := AR."""
    import shutil

    from safetensors.torch import save_file

    tensors = {k: v for k, v in reference.read_hf_tensors(qwen3_ckpt).items() if "_diff." not in k}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config = json.loads((qwen3_ckpt / "config.json").read_text())
    config["model_type"] = "qwen3"
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copyfile(qwen3_ckpt / "tokenizer.json", tmp_path / "tokenizer.json")
    model = reference.load_hf(tmp_path)
    for layer in model.layers:
        assert torch.equal(layer.attn_diff.q_proj.weight, layer.attn.q_proj.weight)
        assert torch.equal(layer.attn_diff.k_norm.weight, layer.attn.k_norm.weight)


def test_diff_only_checkpoint_loads_on_its_base(qwen3_ckpt, tmp_path):
    """What the trainer writes (config + `_diff` tensors) plus the base it was trained on = the full checkpoint."""
    diff_only = fixtures.write_tiny_orthrus_qwen3(tmp_path, seed=1, diff_only=True)  # same seed: same weights
    assert all("_diff." in name for name in reference.read_hf_tensors(diff_only))
    with pytest.raises(PyorthrusError, match="diff-only checkpoint; pass the base model"):
        reference.load_hf(diff_only)
    full, combined = reference.load_hf(qwen3_ckpt), reference.load_hf(diff_only, base=qwen3_ckpt)
    for (name, a), (_, b) in zip(full.state_dict().items(), combined.state_dict().items()):
        assert torch.equal(a, b), name


# -- speculative sampling --------------------------------------------------------------------------------------


def tiny_random_model(vocab: int = 5) -> reference.OrthrusModel:
    cfg = reference.OrthrusConfig(base="qwen3", vocab_size=vocab, hidden_size=16, intermediate_size=32, num_layers=1,
                                  num_heads=2, num_kv_heads=1, head_dim=8, rms_norm_eps=1e-6, rope_theta=10000.0,
                                  tie_word_embeddings=False, block_size=3, mask_token_id=vocab - 1)
    torch.manual_seed(0)
    model = reference.OrthrusModel(cfg)
    with torch.no_grad():
        for p in model.parameters():  # spread the logits so that p and q differ clearly
            if p.dim() > 1:
                p.mul_(2.0)
    return model.eval()


def exact_two_token_distribution(model, prompt, **processing) -> torch.Tensor:
    """P(t1, t2) of AR sampling, computed exactly by enumeration."""
    with torch.no_grad():
        cache = model.new_cache()
        p1 = reference.sampling_probs(model.forward_ar(prompt, cache)[-1], **processing)
        joint = torch.zeros(model.cfg.vocab_size, model.cfg.vocab_size, dtype=torch.float64)
        for t1 in range(model.cfg.vocab_size):
            branch = reference.KVCache(list(cache.keys), list(cache.values))
            joint[t1] = p1[t1] * reference.sampling_probs(model.forward_ar([t1], branch)[-1], **processing)
    return joint


def empirical_two_token_distribution(model, prompt, runs: int, block_size, **processing) -> torch.Tensor:
    counts = torch.zeros(model.cfg.vocab_size, model.cfg.vocab_size, dtype=torch.float64)
    for seed in range(runs):
        tokens, _ = reference.sample_generate(model, prompt, 2, block_size=block_size, seed=seed, **processing)
        counts[tokens[0], tokens[1]] += 1
    return counts / runs


@pytest.mark.parametrize("processing", [dict(temperature=1.0), dict(temperature=1.5, top_k=3, top_p=0.9)])
def test_speculative_sampling_is_lossless(processing):
    """The first two tokens of Orthrus rejection sampling follow the exact AR distribution (total variation within
    sampling noise), while the drafts alone follow a clearly different one (so the test can fail). With 3000 runs
    over 25 outcomes, the TV of exact multinomial samples stays below 0.045 (max of 300 simulations)."""
    model, prompt, runs = tiny_random_model(), [1, 2, 3], 3000
    exact = exact_two_token_distribution(model, prompt, **processing)
    orthrus = empirical_two_token_distribution(model, prompt, runs, block_size=3, **processing)
    assert 0.5 * (orthrus - exact).abs().sum() < 0.05

    with torch.no_grad():  # distribution of the first two drafted tokens, for contrast
        cache = model.new_cache()
        model.forward_ar(prompt[:-1], cache)
        mask = model.cfg.mask_token_id
        q = reference.sampling_probs(model.forward_draft([prompt[-1], mask, mask], cache)[:2], **processing)
    drafts_only = torch.outer(q[0], q[1])
    assert 0.5 * (drafts_only - exact).abs().sum() > 0.2


def test_sampling_at_temperature_zero_is_greedy(qwen3_ckpt):
    model = reference.load_hf(qwen3_ckpt)
    prompt = token_ids(6, seed=30).tolist()
    greedy, _ = reference.greedy_generate(model, prompt, 20)
    assert reference.sample_generate(model, prompt, 20, temperature=0.0)[0] == greedy
    tokens, stats = reference.sample_generate(model, prompt, 20, block_size=4, temperature=0.0)
    assert tokens == greedy and stats.accepted == reference.greedy_generate(model, prompt, 20, block_size=4)[1].accepted


def test_ar_sampling_matches_exact_distribution_and_is_seeded():
    model, prompt = tiny_random_model(), [1, 2, 3]
    exact = exact_two_token_distribution(model, prompt, temperature=1.0)
    ar = empirical_two_token_distribution(model, prompt, 3000, block_size=None, temperature=1.0)
    assert 0.5 * (ar - exact).abs().sum() < 0.05
    first = reference.sample_generate(model, prompt, 10, block_size=3, seed=7)
    assert first == reference.sample_generate(model, prompt, 10, block_size=3, seed=7)
