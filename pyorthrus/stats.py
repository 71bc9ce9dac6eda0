"""What a generation did: tokens, cycles, passes, acceptance and where the time went (llama.cpp's side; the
PyTorch reference keeps its own, pyorthrus.reference.ReferenceStats)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


def tokens_per_cycle(tokens: int, ar_steps: int, cycles: int, default: float | None = 0.0) -> float | None:
    """Tokens committed per Orthrus cycle: the generated tokens less the plain AR steps block_size="auto" took, over
    the cycles; `default` when there were no cycles."""
    return (tokens - ar_steps) / cycles if cycles else default


@dataclass
class GenerationStats:
    mode: str
    block_size: int | str  # K, or "auto"
    n_prompt: int = 0
    n_generated: int = 0
    n_cycles: int = 0  # Orthrus cycles
    n_ar_steps: int = 0  # plain AR steps: every token in mode "ar"; those block_size="auto" chose instead of a cycle
    n_passes: int = 0  # forward passes of the decode rounds: 2 per cycle, 1 per carried fused cycle or AR step
    n_carried: int = 0  # fused cycles that reused the draft their predecessor's pass made (no draft pass)
    cycles: list[tuple[int, int]] = field(default_factory=list)  # (K, committed tokens) per Orthrus cycle, in order
    accepted: Counter = field(default_factory=Counter)  # accepted drafts per cycle -> count
    t_profile_s: float = 0.0  # block_size="auto" measuring the pass costs (first generation only); not in t_total_s
    t_prefill_s: float = 0.0
    t_first_token_s: float = 0.0  # prefill + the first decode round
    t_draft_s: float = 0.0
    t_verify_s: float = 0.0
    t_ar_s: float = 0.0  # one-token AR steps (mode "ar", or chosen by block_size="auto")
    t_total_s: float = 0.0  # prefill excluded
    n_reused: int = 0  # prompt tokens whose cache cells an earlier generation left (prefix reuse): not decoded again
    tree: int = 0  # tree verify: nodes per verify pass besides the root (0: chains)
    n_tree_cycles: int = 0  # tree verify: cycles that verified a tree (block_size "auto" chooses per round)
    n_tree_nodes: int = 0  # tree verify: nodes verified, all cycles together
    n_offchain: int = 0  # tree verify: cycles whose committed path left the draft's argmax chain
    n_redecoded: int = 0  # tree verify, strict builds: tokens decoded again at the cells AR uses (one pass each cycle)
    t_redecode_s: float = 0.0
    # block_size="auto": why it ran what it ran, for a footer ("a K=4 cycle costs 6.1 AR steps here"); "" otherwise
    auto_note: str = ""

    @property
    def tokens_per_cycle(self) -> float:
        """Tokens committed per Orthrus cycle (AR steps left out); 0 without cycles (mode "ar")."""
        return tokens_per_cycle(self.n_generated, self.n_ar_steps, self.n_cycles)

    @property
    def tokens_per_second(self) -> float:
        return self.n_generated / self.t_total_s if self.t_total_s else 0.0

    def as_dict(self) -> dict:
        return {"mode": self.mode, "block_size": self.block_size, "n_prompt": self.n_prompt,
                "n_generated": self.n_generated, "n_cycles": self.n_cycles, "n_ar_steps": self.n_ar_steps,
                "n_passes": self.n_passes, "n_carried": self.n_carried,
                "tokens_per_cycle": self.tokens_per_cycle, "tokens_per_second": self.tokens_per_second,
                "accepted_histogram": {int(k): v for k, v in sorted(self.accepted.items())},
                "block_size_histogram": dict(sorted(Counter(k for k, _ in self.cycles).items())),
                "t_profile_s": self.t_profile_s, "t_prefill_s": self.t_prefill_s,
                "t_first_token_s": self.t_first_token_s, "t_draft_s": self.t_draft_s, "t_verify_s": self.t_verify_s,
                "t_ar_s": self.t_ar_s, "t_total_s": self.t_total_s, "n_reused": self.n_reused,
                "auto_note": self.auto_note, "tree": self.tree, "n_tree_cycles": self.n_tree_cycles,
                "n_tree_nodes": self.n_tree_nodes,
                "n_offchain": self.n_offchain, "n_redecoded": self.n_redecoded, "t_redecode_s": self.t_redecode_s}
