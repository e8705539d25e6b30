"""Layout heuristics: pure functions of (vectors, dim, budget, target recall)."""

from __future__ import annotations

import re

import pytest

from indexing.layouts import (
    FLAT_MAX_VECTORS,
    HEADROOM,
    LayoutError,
    choose_layout,
    flat_bytes,
    format_bytes,
    hnsw_bytes,
    ivf_flat_bytes,
    ivf_lists,
    ivfpq_bytes,
    parse_bytes,
    pq_candidates,
    pq_m,
    train_sample_size,
)

GB = 10**9


@pytest.mark.parametrize(("text", "expected"), [
    ("4GB", 4 * GB), ("512MB", 512 * 10**6), ("1.5GiB", int(1.5 * 2**30)), ("2gb", 2 * GB),
    (" 10 kB ", 10_000), ("123", 123), (4096, 4096), ("1M", 10**6), ("3MiB", 3 * 2**20),
])
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "4 parsecs", "-1GB", "1.2.3GB", 0, -5, "0MB"])
def test_parse_bytes_rejects_with_example(bad: str | int) -> None:
    with pytest.raises(LayoutError, match="memory size"):
        parse_bytes(bad)


def test_ivf_lists_is_power_of_two_near_four_sqrt_n() -> None:
    assert ivf_lists(1_000_000) == 4096
    assert ivf_lists(20_000) == 512
    for n in (1, 50, 1000, 10**5, 10**7, 10**9):
        nlist = ivf_lists(n)
        assert nlist & (nlist - 1) == 0 and 1 <= nlist <= 65_536
        assert nlist == 1 or n // nlist >= 39  # every list can be trained
    assert ivf_lists(10**12) == 65_536


def test_train_sample_size_bounds() -> None:
    assert train_sample_size(4096, 10**7) == 64 * 4096
    assert train_sample_size(4096, 10**7, per_list=10) == 39 * 4096
    assert train_sample_size(4096, 10**7, per_list=1000) == 256 * 4096
    assert train_sample_size(512, 20_000) == 20_000  # capped at n


def test_estimators() -> None:
    assert flat_bytes(1000, 384) >= 1000 * 384 * 4
    assert hnsw_bytes(1000, 384) >= flat_bytes(1000, 384) + 1000 * 32 * 2 * 4
    assert ivf_flat_bytes(10**6, 384, 4096) == 10**6 * (384 * 4 + 8) + 4096 * 384 * 4
    assert ivfpq_bytes(10**6, 384, 4096, 48) == 10**6 * 56 + 4096 * 384 * 4 + 256 * 384 * 4


def test_pq_m_divides_dim_and_steps_down_with_budget() -> None:
    assert pq_candidates(384)[0] == 192 and all(384 % m == 0 for m in pq_candidates(384))
    big = pq_m(384, 10**6, 4096, None)
    small = pq_m(384, 10**6, 4096, 600 * 10**6)
    assert big == 192 and small is not None and small < big and 384 % small == 0
    assert pq_m(384, 10**6, 4096, 10**6) is None


def test_auto_small_is_exact() -> None:
    choice = choose_layout(50_000, 384, 2 * GB)
    assert (choice.factory, choice.kind, choice.train_size) == ("Flat", "flat", 0)
    assert "50.0k vectors, budget 2.0GB → Flat" in choice.reason


def test_auto_large_without_budget_is_ivf_flat() -> None:
    choice = choose_layout(FLAT_MAX_VECTORS + 1, 384, None)
    assert choice.kind == "ivf" and choice.factory == f"IVF{ivf_lists(FLAT_MAX_VECTORS + 1)},Flat"
    assert "is slow above 200.0k vectors" in choice.reason


def test_auto_steps_down_when_full_vectors_do_not_fit() -> None:
    choice = choose_layout(10**6, 384, 2 * GB)
    assert (choice.kind, choice.factory) == ("ivfsq", "IVF4096,SQ8")
    assert choice.estimated_bytes <= 2 * GB
    assert choice.reason.startswith("1.0M vectors, budget 2.0GB → IVF4096,SQ8 (exact would need")
    assert "IVF4096,Flat" in choice.reason  # says what did not fit


def test_auto_steps_down_to_pq_then_smaller_m() -> None:
    pq = choose_layout(10**6, 384, 800 * 10**6)
    assert (pq.kind, pq.factory) == ("ivfpq", "IVF4096,PQ192")
    tighter = choose_layout(10**6, 384, 600 * 10**6)
    assert tighter.kind == "ivfpq" and tighter.params["m"] < pq.params["m"]
    assert 384 % tighter.params["m"] == 0 and tighter.estimated_bytes <= 600 * 10**6
    assert "IVF4096,SQ8" in tighter.reason
    low = choose_layout(10**6, 384, 800 * 10**6, target_recall=0.8)
    assert low.params["m"] <= 96  # a lower target allows the faster, smaller codes


def test_auto_flat_when_small_but_not_fitting_goes_approximate() -> None:
    need = choose_layout(100_000, 384, None).estimated_bytes
    choice = choose_layout(100_000, 384, need - 1)
    assert choice.kind in ("ivf", "ivfsq", "ivfpq")


def test_budget_too_small_names_the_knob_and_the_size() -> None:
    with pytest.raises(LayoutError, match=r"raise --memory-budget to at least \d+\.\dMB"):
        choose_layout(10**6, 384, 50 * 10**6)


@pytest.mark.parametrize(("n", "budget", "requested"), [
    (10**6, 50 * 10**6, "auto"), (10**6, GB // 2, "ivf"), (123_457, 10**6, "flat"),
])
def test_suggested_budget_is_enough(n: int, budget: int, requested: str) -> None:
    with pytest.raises(LayoutError) as err:
        choose_layout(n, 384, budget, requested)
    suggested = re.search(r"at least (\S+?)( |$)", str(err.value)).group(1)
    choose_layout(n, 384, parse_bytes(suggested), requested)  # fits: no error


def test_exact_recall_target_refuses_approximate() -> None:
    assert choose_layout(10**6, 384, None, target_recall=1.0).kind == "flat"
    with pytest.raises(LayoutError, match="--target-recall"):
        choose_layout(10**6, 384, GB, target_recall=1.0)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfsq", "ivfpq"])
def test_explicit_kinds(kind: str) -> None:
    choice = choose_layout(300_000, 128, None, kind)
    assert choice.kind == kind and "asked for" in choice.reason
    assert choice.estimated_bytes >= choice.index_bytes * HEADROOM - 1


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfsq"])
def test_explicit_over_budget_says_what_is_needed(kind: str) -> None:
    need = choose_layout(10**6, 384, None, kind).estimated_bytes
    with pytest.raises(LayoutError, match=f"needs {format_bytes(need)}.*--memory-budget"):
        choose_layout(10**6, 384, GB // 2, kind)


def test_explicit_ivfpq_picks_m_under_budget() -> None:
    choice = choose_layout(10**6, 384, GB, "ivfpq")
    assert choice.estimated_bytes <= GB and 384 % choice.params["m"] == 0


def test_factory_string_is_validated_and_classified() -> None:
    choice = choose_layout(100_000, 64, None, "IVF256,PQ16")
    assert (choice.factory, choice.kind, choice.params) == ("IVF256,PQ16", "ivfpq",
                                                            {"nlist": 256, "m": 16})
    assert choice.train_size == train_sample_size(256, 100_000)
    assert choose_layout(100_000, 64, None, "IVF256,SQ8").kind == "ivfsq"
    assert choose_layout(100_000, 64, None, "IVF256,SQ4").kind == "ivfsq"
    assert choose_layout(100_000, 64, None, "PQ16").kind == "custom"
    assert choose_layout(1000, 64, None, "HNSW16,Flat").kind == "hnsw"


@pytest.mark.parametrize("bad", ["Bogus12", "IVF256,PQ10", "LSH"])
def test_unknown_factory_string_is_named(bad: str) -> None:
    with pytest.raises(LayoutError, match=repr(bad)):
        choose_layout(100_000, 64, None, bad)


def test_factory_string_with_too_many_lists() -> None:
    with pytest.raises(LayoutError, match="fewer lists"):
        choose_layout(1000, 64, None, "IVF4096,Flat")


def test_no_vectors() -> None:
    with pytest.raises(LayoutError, match="nothing to index"):
        choose_layout(0, 384, None)
