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

    def __init__(self, costs: PassCosts, trained_k: int, fused: bool = False):
        self.costs = costs
        self.fused = fused
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

    # -- decisions ------------------------------------------------------------------------------------------------
    def choose(self, limit: int) -> int:
        """The block size of the next round, or 1 for a plain AR step, when at most `limit` more tokens are wanted
        (a cycle commits at most K tokens, so K > limit only costs more)."""
        if limit < 2:
            return 1
        last = min(limit, len(self._rates) + 1) - 2  # index of the largest usable block size, min(limit, trained K)
        best = self._best_upto[last]
        best_k, step, cycle, tokens = best + 2, self._step_s, self._cycle_s[best], self._tokens[best]
        ar_winning = self._rates[best] * step <= 1.0
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
        self.next_fused = self.fused and self._fused_wins[best]
        if self._until_probe > 0:
            self._until_probe -= 1
            return 1 if ar_winning else best_k
        self._until_probe = None
        return best_k if ar_winning else 1

    def observe_cycle(self, block_size: int, n_accepted: int, seconds: float, fused: bool = False,
                      carried: bool = False) -> None:
        """A cycle at block_size accepted n_accepted drafts: positions 1..n_accepted accepted, the next one (if
        any) rejected, later ones not reached. `fused`: it ran fused; `carried`: its draft was carried over."""
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
                "best_over_ar": self._rates[best] * self._step_s, "pass_costs": self.costs.as_dict()}
