"""The little statistics `pyorthrus check` reports, in plain Python (no scipy): Wilson intervals for accuracies, an
interval for a paired accuracy difference, and the chi-square homogeneity test of two samples with its p-value."""
from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: int, n: int) -> list[float]:
    """95% Wilson score interval of a binomial proportion (sensible at 0/n and n/n, unlike the Wald interval)."""
    if n == 0:
        return [0.0, 1.0]
    p, z2 = successes / n, Z_95 * Z_95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z_95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [0.0 if successes == 0 else centre - half, 1.0 if successes == n else centre + half]


def paired_difference(first: Sequence[bool], second: Sequence[bool]) -> dict:
    """Accuracy of `second` minus accuracy of `first` on the same problems, with a 95% interval: exactly [0, 0]
    when every pair agrees (nothing differs on these problems), else Newcombe's hybrid score interval for paired
    proportions (1998, method 10), which stays inside [-1, 1] and keeps a width when all discordant pairs point
    the same way (a normal approximation on the differences collapses there)."""
    pairs = list(zip(first, second, strict=True))
    n = len(pairs)
    both = sum(a and b for a, b in pairs)
    only_first = sum(a and not b for a, b in pairs)
    only_second = sum(b and not a for a, b in pairs)
    neither = n - both - only_first - only_second
    if only_first == only_second == 0:
        return {"difference": 0.0, "ci95": [0.0, 0.0], "discordant_pairs": 0, "method": "exact (all pairs agree)"}
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    (l1, u1), (l2, u2) = wilson_interval(both + only_first, n), wilson_interval(both + only_second, n)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins else 0.0
    lower = p2 - p1 - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    upper = p2 - p1 + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return {"difference": p2 - p1, "ci95": [max(-1.0, lower), min(1.0, upper)],
            "discordant_pairs": only_first + only_second, "method": "Newcombe paired score interval"}


def chi2_sf(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, statistic/2),
    by its power series below a + 1 and by its continued fraction (modified Lentz) above, where the tail is small
    and must stay accurate."""
    a, x = dof / 2.0, statistic / 2.0
    if dof <= 0 or x <= 0:
        return 1.0
    log_scale = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        k = a
        while term > total * 1e-16:
            k += 1
            term *= x / k
            total += term
        return max(0.0, 1.0 - total * math.exp(log_scale))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    fraction = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1 / (d if abs(d) > tiny else tiny)
        c = b + an / c
        c = c if abs(c) > tiny else tiny
        fraction *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return min(1.0, fraction * math.exp(log_scale))


def goodness_of_fit(samples: Sequence[int], probs) -> dict:
    """Chi-square test that samples (token ids) follow the distribution `probs` (indexed by token id). Tokens
    expected fewer than 5 times are pooled into one category (the approximation's rule of thumb); a sample outside
    the support of probs raises KeyError, as no distribution test should pass it."""
    import numpy as np

    support = np.flatnonzero(probs)
    counts = {int(t): 0 for t in support}
    for t in samples:
        counts[int(t)] += 1
    observed = np.array([counts[int(t)] for t in support], dtype=np.float64)
    expected = np.asarray(probs)[support] * len(samples)
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    return {"statistic": statistic, "dof": dof, "p_value": chi2_sf(statistic, dof), "observed": observed.tolist(),
            "expected": expected.tolist()}


def homogeneity_test(first: Sequence[Hashable], second: Sequence[Hashable], min_count: int = 10) -> dict:
    """Chi-square test that two samples of categorical outcomes come from one distribution (2 x C table).

    The chi-square approximation needs expected cell counts of about 5 or more, so categories seen fewer than
    `min_count` times in both samples together are pooled into one "rare" category; a pool that is itself under
    `min_count` joins the least frequent kept category. With fewer than two categories left there is nothing to
    test (dof 0, p-value 1)."""
    count_first, count_second = Counter(first), Counter(second)
    totals = count_first + count_second
    cells = [[count_first[c], count_second[c]] for c, total in totals.items() if total >= min_count]
    rare = [sum(count_first[c] for c, t in totals.items() if t < min_count),
            sum(count_second[c] for c, t in totals.items() if t < min_count)]
    if sum(rare) >= min_count or (sum(rare) and not cells):
        cells.append(rare)
    elif sum(rare):
        smallest = min(cells, key=sum)
        smallest[0] += rare[0]
        smallest[1] += rare[1]
    result = {"categories": len(cells), "distinct": len(totals)}
    if len(cells) < 2:
        return {**result, "statistic": 0.0, "dof": 0, "p_value": 1.0}
    n_first, n_second = len(first), len(second)
    n = n_first + n_second
    statistic = 0.0
    for observed_first, observed_second in cells:
        column = observed_first + observed_second
        expected_first, expected_second = n_first * column / n, n_second * column / n
        statistic += ((observed_first - expected_first) ** 2 / expected_first
                      + (observed_second - expected_second) ** 2 / expected_second)
    dof = len(cells) - 1
    return {**result, "statistic": statistic, "dof": dof, "p_value": chi2_sf(statistic, dof)}
