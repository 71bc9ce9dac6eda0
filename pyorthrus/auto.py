"""block_size="auto": before each decode round, Orthrus at the block size with the best expected tokens per
second, or a plain AR step when no block size beats it.

Expected tokens of a cycle at block size K: 1 + sum over j < K of P(drafts 1..j all accepted), the product of
per-position acceptance rates p_j = P(draft j accepted | drafts before it accepted). Each p_j is an exponential
moving average kept as discounted counts; a position with few observations leans on the estimate of the position
before it (a position never reached looks like the last one measured). Seconds of a cycle: t_draft(K) + t_verify(K)
from the device's pass-cost curve, and of an AR step t(1), each scaled by the running ratio of observed to profiled
time (the profile gives the shape of the curve, observations its level: the context grows, the machine's load
changes).

With fused cycles allowed, each K also has a fused variant: its verify pass is a 2K-token pass that drafts the
next block too, and the next cycle skips its draft pass when this one accepts every draft and its bonus is the
draft's guess. Its expected seconds are t_verify(2K) + (1 - pi) t_draft(K), pi = P(every draft accepted) x h, with
h = P(bonus == guess | every draft accepted) learned like the acceptance rates (seen at the cycle after a fused full
acceptance: carried or not). Each round runs the better variant of the best K.

With tree budgets, the trained K also has tree variants: a cycle verifying a tree of B draft nodes in one pass of
B+1 tokens. Expected tokens of a tree cycle are a discounted mean of what tree cycles of that budget committed
(before any, the chain's at the trained K times TREE_PRIOR_GAIN; once cycles win over AR steps, each budget runs
once, at a cycle that would run anyway, before the estimates rank them); its seconds t_draft(K) + t_verify(B+1), scaled by its own observed/profiled ratio once observed (which then
also prices a strict build's relayout pass). A round runs a tree when its expected tokens per second beat every
chain's.

The option that wins runs; the other one is probed now and then, so that neither its statistics nor its cost go
stale: an Orthrus cycle while AR wins, an AR step while Orthrus wins. An option never observed yet is probed at once
(the profile may have caught the machine at a busy moment); after that the gap starts at FIRST_PROBE_GAP rounds,
doubles after every probe that does not change the winner, and is never shorter than keeps the expected loss of a
probe under PROBE_BUDGET of the time since the last one. A device where even fully accepted blocks lose to AR is never
probed with a cycle.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from .pass_costs import PassCosts

DISCOUNT = 0.95  # weight of the past at each new observation of a position: a memory of ~20 cycles
PRIOR_WEIGHT = 1.0  # pseudo-observations a position borrows from the position before it
FIRST_POSITION_PRIOR = 0.5  # what position 1 is assumed to accept before any cycle has run
TREE_PRIOR_GAIN = 1.3  # trees: tokens per cycle assumed at first, over the chain's at the trained K (measured: +20-30%)
AUTO_TREES = (8, 16, 32)  # the tree budgets block_size="auto" weighs unless told otherwise (Orthrus(tree=...))
GUESS_PRIOR = 0.5  # fused cycles: what P(bonus == the draft's guess | every draft accepted) is assumed to be at first
# least weight of a new observed/profiled time ratio (the n-th observation gets 1/n until then: a plain mean at
# first), averaged in log space: a pass preempted to 10x its time moves the estimate by 10 ** 0.1 = 1.26x, not 1.9x
COST_SMOOTHING = 0.1
FIRST_PROBE_GAP = 16  # rounds of the winner before the first probe of the other option
MAX_PROBE_GAP = 1024
PROBE_BUDGET = 0.01  # a probe's expected loss may be at most this share of the AR time since the last one


class AutoBlockSize:
    """Chooses each round's block size (1 = a plain AR step) from the pass costs and the acceptance seen so far.
    One per Orthrus instance: its statistics carry over from one generation to the next."""

    def __init__(self, costs: PassCosts, trained_k: int, fused: bool = False, trees: tuple[int, ...] = ()):
        self.costs = costs
        self.fused = fused
        # tree variants of the trained K (needs the curve up to the largest budget + 1)
        self.trees = tuple(trees)
        self._profiled_tree_s = np.array([costs.draft(trained_k) + costs.verify(b + 1) for b in self.trees])
        self._tree_tokens = np.zeros(len(self.trees))  # discounted committed tokens (uncut) per budget
        self._tree_seen = np.zeros(len(self.trees))  # discounted tree cycles per budget
        self._log_tree_scale = np.zeros(len(self.trees))  # log(observed / profiled seconds) per budget
        self._trees_observed = [0] * len(self.trees)
        self.next_tree = 0  # the tree budget of the round choose() returned last (0: a chain)
        self.block_sizes = np.arange(2, trained_k + 1)
        self._profiled_cycle_s = np.array([costs.cycle(int(k)) for k in self.block_sizes])
        self._profiled_draft_s = np.array([costs.draft(int(k)) for k in self.block_sizes])
        # fused: the 2K-token verify pass that also drafts the next block (needs the curve up to 2 x trained K)
        self._profiled_fused_s = np.array([costs.verify(2 * int(k)) for k in self.block_sizes]) if fused else None
        self._guess_hits = self._guess_seen = 0.0  # discounted: carried cycles / cycles after a fused full acceptance
        self._pending_full: int | None = None  # K of the last cycle if it was fused and accepted every draft
        self.next_fused = False  # whether the block size choose() returned last should run fused
        self._accepted = np.zeros(trained_k - 1)  # discounted accepted count per draft position 1 ... K-1
        self._seen = np.zeros(trained_k - 1)  # discounted count of cycles that reached the position
        self._log_cycle_scale = 0.0  # log(observed / profiled seconds) of an Orthrus cycle
        self._log_step_scale = 0.0  # log(observed / profiled seconds) of an AR step
        self._step_s = costs.t_step_s
        self._cycles_seen = self._steps_seen = 0
        self._ar_winning = True  # before any statistics: AR, with an Orthrus probe first
        self._gap = FIRST_PROBE_GAP
        self._until_probe: int | None = None  # winner rounds left before the next probe; None: to be scheduled
        self._refresh()

    def cost_note(self) -> str:
        """What the profile says a small cycle costs, in AR steps (the reason AR steps win where they do)."""
        k = min(4, int(self.block_sizes[-1]))
        return f"a K={k} cycle costs {self.costs.cycle(k) / self.costs.t_step_s:.1f} AR steps here"

    # -- estimates ------------------------------------------------------------------------------------------------
    def acceptance(self) -> np.ndarray:
        """p_j for draft positions j = 1 ... trained K - 1."""
        rates = np.empty_like(self._accepted)
        previous = FIRST_POSITION_PRIOR
        for j, (accepted, seen) in enumerate(zip(self._accepted, self._seen)):
            rates[j] = previous = (accepted + PRIOR_WEIGHT * previous) / (seen + PRIOR_WEIGHT)
        return rates

    def expected_tokens(self) -> np.ndarray:
        """Expected committed tokens of one cycle for each K in block_sizes."""
        return 1.0 + np.cumsum(np.cumprod(self.acceptance()))

    def cycle_seconds(self) -> np.ndarray:
        return self._profiled_cycle_s * math.exp(self._log_cycle_scale)

    def expected_tree_tokens(self) -> np.ndarray:
        """Expected committed tokens of a tree cycle for each budget in trees."""
        prior = self._expected[-1] * TREE_PRIOR_GAIN
        return (self._tree_tokens + PRIOR_WEIGHT * prior) / (self._tree_seen + PRIOR_WEIGHT)

    def tree_cycle_seconds(self) -> np.ndarray:
        """Expected seconds of a tree cycle per budget: the profile's, at the budget's own observed scale, or the
        chains' before it was observed."""
        scale = np.array([s if n else self._log_cycle_scale for s, n in zip(self._log_tree_scale,
                                                                              self._trees_observed)])
        return self._profiled_tree_s * np.exp(scale)

    def guess_rate(self) -> float:
        return (self._guess_hits + PRIOR_WEIGHT * GUESS_PRIOR) / (self._guess_seen + PRIOR_WEIGHT)

    def fused_cycle_seconds(self) -> np.ndarray:
        """Expected seconds of a fused cycle per K in the steady state: its 2K-token pass, plus the draft pass
        unless the previous cycle carried this one's draft over."""
        carried = np.cumprod(self.acceptance()) * self.guess_rate()
        return (self._profiled_fused_s + (1.0 - carried) * self._profiled_draft_s) * math.exp(self._log_cycle_scale)

    def step_seconds(self) -> float:
        return self._step_s

    def _refresh(self) -> None:
        """Recompute what choose() reads after a cycle, as plain floats per limit: choose() runs before every AR
        step too, where numpy calls on tiny arrays would cost more than the arithmetic."""
        self._expected = self.expected_tokens()
        cycle_s = self.cycle_seconds()
        if self.fused:
            fused_s = self.fused_cycle_seconds()
            self._fused_wins = (fused_s < cycle_s).tolist()
            cycle_s = np.minimum(cycle_s, fused_s)
        rates = self._expected / cycle_s
        # tokens/s of each K if every draft were accepted: where even that is below AR, probing cannot pay
        ceiling_rates = self.block_sizes / cycle_s
        self._cycle_s, self._tokens, self._rates = cycle_s.tolist(), self._expected.tolist(), rates.tolist()
        # [i]: among the block sizes 2 ... i+2, the index of the best rate (the smaller K on a tie) and the best ceiling
        self._best_upto, best = [], 0
        for i, rate in enumerate(self._rates):
            best = i if rate > self._rates[best] else best
            self._best_upto.append(best)
        self._ceiling_upto = list(itertools.accumulate(ceiling_rates.tolist(), max))
        if self.trees:
            tree_tokens, tree_s = self.expected_tree_tokens(), self.tree_cycle_seconds()
            tree_rates = tree_tokens / tree_s
            best_tree = int(np.argmax(tree_rates))
            self._tree_best = (self.trees[best_tree], float(tree_rates[best_tree]), float(tree_s[best_tree]),
                               float(tree_tokens[best_tree]))

    # -- decisions ------------------------------------------------------------------------------------------------
    def choose(self, limit: int) -> int:
        """The block size of the next round, or 1 for a plain AR step, when at most `limit` more tokens are wanted
        (a cycle commits at most K tokens, so K > limit only costs more)."""
        if limit < 2:
            return 1
        last = min(limit, len(self._rates) + 1) - 2  # index of the largest usable block size, min(limit, trained K)
        best = self._best_upto[last]
        best_k, step, cycle, tokens, rate = best + 2, self._step_s, self._cycle_s[best], self._tokens[best], \
            self._rates[best]
        self.next_tree = 0
        # trees are weighed once a chain cycle has grounded their prior, and only where a whole block is wanted
        trees_open = bool(self.trees) and self._seen[0] > 0 and last == len(self._rates) - 1
        if trees_open and self._tree_best[1] > rate:
            # a tree at the trained K beats every chain (its cycle commits at most K tokens: limit >= K here)
            self.next_tree, rate, cycle, tokens = self._tree_best
            best_k = last + 2
        ar_winning = rate * step <= 1.0
        if ar_winning != self._ar_winning:  # a new winner: probe the old one soon
            self._ar_winning, self._gap, self._until_probe = ar_winning, FIRST_PROBE_GAP, None
        if ar_winning and self._ceiling_upto[last] * step <= 1.0:
            return 1
        if self._until_probe is None and (self._cycles_seen if ar_winning else self._steps_seen) == 0:
            self._until_probe = 0
        elif self._until_probe is None:
            # a probe loses the time the loser's round takes beyond the winner's time for the same tokens
            if ar_winning:
                loss, round_s = cycle - tokens * step, step
            else:
                loss, round_s = step - cycle / tokens, cycle
            self._until_probe = max(self._gap, math.ceil(loss / (PROBE_BUDGET * round_s)))
            self._gap = min(2 * self._gap, MAX_PROBE_GAP)
        self.next_fused = self.fused and not self.next_tree and self._fused_wins[best]
        if self._until_probe > 0:
            self._until_probe -= 1
            choice = 1 if ar_winning else best_k
        else:
            self._until_probe = None
            choice = best_k if ar_winning else 1
        unseen = [b for b, n in zip(self.trees, self._trees_observed) if not n]
        if choice == 1:
            self.next_tree = 0
        elif unseen and not ar_winning and trees_open:
            # Orthrus wins, so a cycle runs anyway: a budget never observed yet runs it once (priors alone cannot
            # rank the budgets)
            self.next_tree, self.next_fused, choice = unseen[0], False, last + 2
        return choice

    def observe_cycle(self, block_size: int, n_accepted: int, seconds: float, fused: bool = False,
                      carried: bool = False, tree: int = 0) -> None:
        """A cycle at block_size accepted n_accepted drafts: positions 1..n_accepted accepted, the next one (if
        any) rejected, later ones not reached. `fused`: it ran fused; `carried`: its draft was carried over;
        `tree`: it verified a tree of that many nodes (its path's acceptance says nothing about the chain's)."""
        if tree in self.trees:
            self._observe_tree(self.trees.index(tree), n_accepted, seconds)
            return
        i = block_size - 2
        if fused and self._pending_full == block_size:
            self._guess_hits = self._guess_hits * DISCOUNT + carried
            self._guess_seen = self._guess_seen * DISCOUNT + 1.0
        self._pending_full = block_size if fused and n_accepted == block_size - 1 else None
        profiled = self._profiled_cycle_s[i] if not fused else \
            self._profiled_fused_s[i] + (0.0 if carried else self._profiled_draft_s[i])
        reached = min(n_accepted + 1, block_size - 1)
        self._seen[:reached] = self._seen[:reached] * DISCOUNT + 1.0
        self._accepted[:reached] *= DISCOUNT
        self._accepted[:min(n_accepted, reached)] += 1.0
        self._cycles_seen += 1
        log_ratio = math.log(seconds / profiled)
        self._log_cycle_scale += max(COST_SMOOTHING, 1 / self._cycles_seen) * (log_ratio - self._log_cycle_scale)
        self._refresh()

    def _observe_tree(self, b: int, n_accepted: int, seconds: float) -> None:
        self._pending_full = None
        self._tree_tokens[b] = self._tree_tokens[b] * DISCOUNT + n_accepted + 1
        self._tree_seen[b] = self._tree_seen[b] * DISCOUNT + 1.0
        self._trees_observed[b] += 1
        self._cycles_seen += 1
        log_ratio = math.log(seconds / self._profiled_tree_s[b])
        if self._trees_observed[b] == 1:
            self._log_tree_scale[b] = log_ratio
        else:
            self._log_tree_scale[b] += max(COST_SMOOTHING, 1 / self._trees_observed[b]) * \
                (log_ratio - self._log_tree_scale[b])
        self._refresh()

    def observe_step(self, seconds: float) -> None:
        self._pending_full = None
        self._steps_seen += 1
        log_ratio = math.log(seconds / self.costs.t_step_s)
        self._log_step_scale += max(COST_SMOOTHING, 1 / self._steps_seen) * (log_ratio - self._log_step_scale)
        self._step_s = self.costs.t_step_s * math.exp(self._log_step_scale)

    def as_dict(self) -> dict:
        """The current estimates, for reports."""
        best = self._best_upto[-1]
        return {"acceptance": [round(float(p), 4) for p in self.acceptance()],
                "expected_tokens": {int(k): round(float(e), 3) for k, e in zip(self.block_sizes, self._expected)},
                "cycle_scale": math.exp(self._log_cycle_scale), "step_scale": math.exp(self._log_step_scale),
                "fused": self.fused, "guess_rate": self.guess_rate() if self.fused else None,
                "best_block_size": int(self.block_sizes[best]),
                "trees": {int(b): {"expected_tokens": round(float(e), 3), "seconds": float(s)}
                          for b, e, s in zip(self.trees, self.expected_tree_tokens(), self.tree_cycle_seconds())}
                if self.trees else {},
                "best_over_ar": self._rates[best] * self._step_s, "pass_costs": self.costs.as_dict()}
