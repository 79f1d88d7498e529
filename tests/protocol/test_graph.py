"""Tests of the public SecAgg/SecAgg+ neighbour graph."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secagg.errors import ConfigError
from secagg.protocol.graph import NeighbourGraph

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))


def _assert_regular_and_symmetric(graph: NeighbourGraph, degree: int) -> None:
    for u in graph.parties:
        nbrs = graph.neighbours(u)
        assert u not in nbrs
        assert len(nbrs) == degree
        assert nbrs <= set(graph.parties)
        for v in nbrs:
            assert u in graph.neighbours(v)
            assert graph.are_neighbours(u, v)


def _is_connected(graph: NeighbourGraph) -> bool:
    start = graph.parties[0]
    seen = {start}
    todo = [start]
    while todo:
        for v in graph.neighbours(todo.pop()):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return len(seen) == len(graph)


def test_harary_graph_is_symmetric_and_regular() -> None:
    parties = [3, 17, 42, 99, 100, 101, 250, 7, 8, 9]
    graph = NeighbourGraph.harary(parties, 4, SEED)
    assert graph.degree == 4
    assert not graph.is_full
    assert graph.parties == tuple(sorted(parties))
    _assert_regular_and_symmetric(graph, 4)
    assert _is_connected(graph)


def test_same_seed_gives_same_graph() -> None:
    a = NeighbourGraph.harary(range(1, 51), 6, SEED)
    b = NeighbourGraph.harary(list(reversed(range(1, 51))), 6, SEED)
    assert a == b
    assert hash(a) == hash(b)
    assert all(a.neighbours(p) == b.neighbours(p) for p in a.parties)


def test_different_seeds_give_different_graphs() -> None:
    a = NeighbourGraph.harary(range(1, 51), 6, SEED)
    b = NeighbourGraph.harary(range(1, 51), 6, OTHER_SEED)
    assert a != b
    assert any(a.neighbours(p) != b.neighbours(p) for p in a.parties)


def test_ring_order_is_the_documented_fisher_yates_shuffle() -> None:
    # Recompute the documented derivation independently: SHAKE-256(domain || seed), 8-byte
    # big-endian words, rejection sampling, Fisher-Yates over the sorted parties.
    parties = list(range(1, 21))
    stream = hashlib.shake_256(b"secagg/v1/neighbour-graph" + SEED).digest(8 * 64)
    words = [int.from_bytes(stream[i : i + 8], "big") for i in range(0, len(stream), 8)]
    ring = parties[:]
    it = iter(words)
    for i in range(len(ring) - 1, 0, -1):
        bound = i + 1
        limit = 2**64 - (2**64 % bound)
        word = next(it)
        while word >= limit:
            word = next(it)
        j = word % bound
        ring[i], ring[j] = ring[j], ring[i]
    graph = NeighbourGraph.harary(parties, 2, SEED)
    for pos, p in enumerate(ring):
        expected = {ring[(pos - 1) % len(ring)], ring[(pos + 1) % len(ring)]}
        assert graph.neighbours(p) == expected


def test_full_graph_connects_every_pair() -> None:
    graph = NeighbourGraph.full([5, 6, 7, 1000])
    assert graph.is_full
    assert graph.degree == 3
    _assert_regular_and_symmetric(graph, 3)
    assert graph.neighbours(5) == frozenset({6, 7, 1000})


def test_harary_with_degree_n_minus_1_is_full() -> None:
    graph = NeighbourGraph.harary(range(1, 6), 4, SEED)
    assert graph.is_full
    assert graph == NeighbourGraph.full(range(1, 6))


def test_harary_with_degree_n_minus_2_is_regular() -> None:
    graph = NeighbourGraph.harary(range(1, 11), 8, SEED)
    assert not graph.is_full
    _assert_regular_and_symmetric(graph, 8)


def test_contains_and_len() -> None:
    graph = NeighbourGraph.harary([10, 20, 30, 40, 50], 2, SEED)
    assert 10 in graph
    assert 11 not in graph
    assert "10" not in graph
    assert len(graph) == 5
    assert list(graph) == [10, 20, 30, 40, 50]


def test_unknown_party_raises() -> None:
    graph = NeighbourGraph.harary(range(1, 8), 2, SEED)
    with pytest.raises(ConfigError):
        graph.neighbours(8)
    with pytest.raises(ConfigError):
        NeighbourGraph.full(range(1, 4)).neighbours(0)
    with pytest.raises(ConfigError):
        graph.are_neighbours(1, 99)


def test_graph_is_immutable() -> None:
    graph = NeighbourGraph.harary(range(1, 8), 2, SEED)
    with pytest.raises(AttributeError):
        graph._degree = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        NeighbourGraph()


@pytest.mark.parametrize(
    ("parties", "degree"),
    [
        (range(1, 11), 3),  # odd
        (range(1, 11), 0),  # too small
        (range(1, 11), 1),
        (range(1, 11), 10),  # >= n
        (range(1, 11), 12),
        (range(1, 11), -2),
        ([1, 2, 2, 3, 4], 2),  # duplicate
        ([0, 1, 2, 3, 4], 2),  # non-positive
        ([-1, 1, 2, 3, 4], 2),
        ([1], 2),  # too few
        ([], 2),
    ],
)
def test_invalid_harary_inputs_raise(parties: range | list[int], degree: int) -> None:
    with pytest.raises(ConfigError):
        NeighbourGraph.harary(parties, degree, SEED)


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33, "0" * 32])
def test_bad_seed_raises(seed: object) -> None:
    with pytest.raises(ConfigError):
        NeighbourGraph.harary(range(1, 11), 2, seed)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[1.0, 2, 3], [True, 2, 3], ["1", 2, 3]])
def test_non_int_parties_raise(bad: list[object]) -> None:
    with pytest.raises(ConfigError):
        NeighbourGraph.full(bad)  # type: ignore[arg-type]


def test_non_int_degree_raises() -> None:
    with pytest.raises(ConfigError):
        NeighbourGraph.harary(range(1, 11), 2.0, SEED)  # type: ignore[arg-type]


@given(
    n=st.integers(min_value=3, max_value=300),
    half=st.integers(min_value=1, max_value=149),
    seed=st.binary(min_size=32, max_size=32),
    offset=st.integers(min_value=1, max_value=10**9),
)
def test_harary_properties(n: int, half: int, seed: bytes, offset: int) -> None:
    degree = 2 * half
    parties = [offset + 7 * i for i in range(n)]
    if degree >= n:
        with pytest.raises(ConfigError):
            NeighbourGraph.harary(parties, degree, seed)
        return
    graph = NeighbourGraph.harary(parties, degree, seed)
    expected_degree = n - 1 if degree == n - 1 else degree
    assert graph.degree == expected_degree
    _assert_regular_and_symmetric(graph, expected_degree)
    assert _is_connected(graph)
    assert graph == NeighbourGraph.harary(list(reversed(parties)), degree, seed)
