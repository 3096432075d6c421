"""Maglev: Cilium's hash and permutation, the balance bound and the disruption bound."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from agent.lb import maglev



@pytest.mark.parametrize("data,seed,expected", [
    (b"", 0, (0, 0)),
    (b"hello", 0, (0xCBD8A7B341BD9B02, 0x5B1E906A48AE1D19)),
    # cross-checked once against the mmh3 package (hash64, x64 arch, unsigned)
    (b"[10.0.0.1:80/TCP,State:active]", 12345, (7635560981405687847, 17571101923530009018)),
])
def test_murmur3_x64_128_vectors(data, seed, expected):
    assert maglev.murmur3_128(data, seed) == expected


def test_murmur3_matches_reference_for_every_tail_length():
    import mmh3                                   # a test dependency (pyproject [test])
    rng = random.Random(3)
    for n in range(48):                           # every tail length, 0..2 full blocks
        data = bytes(rng.getrandbits(8) for _ in range(n))
        seed = rng.getrandbits(32)
        assert maglev.murmur3_128(data, seed) == mmh3.hash64(data, seed, signed=False)


def _backends(n, weight=1):
    return [(i + 1, maglev.backend_key(f"10.0.{i // 250}.{i % 250 + 1}", 80), weight)
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20])
def test_balance_each_backend_within_one_percent_of_ideal(n):
    m = 16381
    counts = Counter(maglev.build_table(_backends(n), m))
    assert set(counts) == {b for b, _, _ in _backends(n)}
    ideal = m / n
    for c in counts.values():
        assert abs(c - ideal) <= 0.01 * ideal + 1


def test_table_is_deterministic_and_independent_of_input_order():
    b = _backends(5)
    t1 = maglev.build_table(b, 1021)
    shuffled = b[:]
    random.Random(1).shuffle(shuffled)
    assert maglev.build_table(shuffled, 1021) == t1


@pytest.mark.parametrize("n", [3, 5, 10])
def test_removing_one_backend_moves_at_most_its_share_plus_two_percent(n):
    m = 16381
    before = maglev.build_table(_backends(n), m)
    gone = 2
    after = maglev.build_table([b for b in _backends(n) if b[0] != gone], m)
    moved = sum(1 for x, y in zip(before, after) if x != y)
    assert moved / m <= 1 / n + 0.02
    # slots that pointed at the removed backend are all reassigned; almost no others move
    assert all(y != gone for y in after)
    others_moved = sum(1 for x, y in zip(before, after) if x != y and x != gone)
    assert others_moved / m <= 0.02


def test_flows_mostly_keep_their_backend_over_random_5_tuples():
    m = 16381
    before = maglev.build_table(_backends(3), m)
    after = maglev.build_table(_backends(3)[:2], m)
    rng = random.Random(42)
    flows = [rng.getrandbits(32) % m for _ in range(5000)]     # a flow hashes to a slot
    moved = sum(before[f] != after[f] for f in flows) / len(flows)
    assert moved <= 1 / 3 + 0.02


def test_weights_are_honoured():
    m = 16381
    b = [(1, maglev.backend_key("10.0.0.1", 80), 1), (2, maglev.backend_key("10.0.0.2", 80), 3)]
    counts = Counter(maglev.build_table(b, m))
    assert abs(counts[2] / m - 0.75) < 0.02
    zero = b + [(3, maglev.backend_key("10.0.0.3", 80), 0)]
    assert 3 not in maglev.build_table(zero, m)


def test_sizes_and_empty_table():
    with pytest.raises(ValueError):
        maglev.build_table(_backends(2), 1000)
    assert maglev.build_table([], 251) == [maglev.EMPTY] * 251
    assert maglev.seed_murmur() == int.from_bytes(
        __import__("base64").b64decode(maglev.DEFAULT_SEED)[:4], "big")


def _textbook(backends, m):
    """Maglev's population as the paper and Cilium write it (permutation[i][j] = (offset + j *
    skip) % m, computed each probe), with Cilium's weighted turns: the oracle for the agent's
    walk by addition."""
    live = sorted((b for b in backends if b[2] > 0), key=lambda b: b[1])
    s, n = maglev.seed_murmur(), len(live)
    perm = [(h1 % m, h2 % (m - 1) + 1) for h1, h2 in
            (maglev.murmur3_128(k.encode(), s) for _, k, _ in live)]
    weights = [w for _, _, w in live]
    wsum = sum(weights)
    use_w = wsum // n > 1 and len(set(weights)) > 1
    counter, nxt, table, turn = [w / n for w in weights], [0] * n, [maglev.EMPTY] * m, 0
    while maglev.EMPTY in table:
        i = turn % n
        if use_w:
            while (turn + 1) * weights[i] < counter[i]:
                i = (i + 1) % n
            counter[i] += wsum
        while table[slot := (perm[i][0] + nxt[i] * perm[i][1]) % m] != maglev.EMPTY:
            nxt[i] += 1
        table[slot], nxt[i], turn = live[i][0], nxt[i] + 1, turn + 1
    return table


@pytest.mark.parametrize("n", [1, 2, 3, 10, 60])
def test_table_equals_the_textbook_population(n):
    rng = random.Random(n)
    b = [(i + 1, maglev.backend_key(f"10.{i // 200}.{i % 200}.{rng.randrange(256)}", 80), 1)
         for i in range(n)]
    weighted = [(i, k, rng.choice([0, 1, 2, 5, 100])) for i, k, _ in b]
    for m in (251, 1021):
        assert maglev.build_table(b, m) == _textbook(b, m)
        if any(w for _, _, w in weighted):
            assert maglev.build_table(weighted, m) == _textbook(weighted, m)


def test_services_with_one_backend_set_share_one_table():
    """The planner builds a backend set's table once (1,000 services selecting one set of pods:
    one build, not 1,000)."""
    from agent.lb import services
    from datapath import abi
    bs = tuple((i, k) for i, k, _ in _backends(3))
    first = services._maglev_lut(bs, 251)
    assert services._maglev_lut(tuple(list(bs)), 251) is first
    assert first == abi.maglev_lut_bytes(maglev.build_table([(i, k, 1) for i, k in bs], 251))
