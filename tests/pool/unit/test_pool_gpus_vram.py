"""GPU discovery parsing and VRAM accounting (hypothesis: the ledger never overcommits)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from llorch_pool.agent import VramLedger, parse_nvidia_smi
from llorch_pool.errors import InsufficientVram, ModelIncompatible

MIB = 1024 * 1024


def test_parse_nvidia_smi_output() -> None:
    text = (
        "0, NVIDIA GeForce RTX 3090, 24576, 1024, 37\n"
        "1, NVIDIA A100-SXM4-80GB, 81920, 0, [N/A]\n"
        "2, Weird, Name, With Commas, 8192, 512, 5\n"
        "3, Broken, [N/A], [N/A], 0\n"
        "\n"
    )
    gpus = parse_nvidia_smi(text)
    assert [(g.index, g.name) for g in gpus] == [
        ("0", "NVIDIA GeForce RTX 3090"),
        ("1", "NVIDIA A100-SXM4-80GB"),
        ("2", "Weird, Name, With Commas"),
    ]
    assert gpus[0].vram_total_bytes == 24576 * MIB
    assert gpus[0].vram_free_bytes == (24576 - 1024) * MIB
    assert gpus[0].utilization == pytest.approx(0.37)
    assert gpus[1].utilization is None


def test_the_ledger_refuses_what_does_not_fit() -> None:
    ledger = VramLedger({"0": 10})
    ledger.reserve("a", "m", "0", 6)
    with pytest.raises(InsufficientVram) as info:
        ledger.reserve("b", "m", "0", 6)
    assert info.value.details["vram_free_bytes"] == 4
    with pytest.raises(ModelIncompatible):
        ledger.reserve("c", "big", "0", 11)
    assert ledger.free("0") == 4
    ledger.release("a")
    ledger.release("a")  # idempotent
    assert ledger.free("0") == 10
    ledger.set_measured("0", 10, 3)  # something else uses 7 bytes
    assert ledger.free("0") == 3
    with pytest.raises(InsufficientVram):
        ledger.check("m", "0", 4)


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("reserve"), st.integers(0, 9), st.sampled_from(["0", "1"]), st.integers(0, 12)
        ),
        st.tuples(st.just("release"), st.integers(0, 9), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@given(ops)
def test_the_ledger_never_overcommits_and_matches_a_model(
    operations: list[tuple[str, int, str, int]],
) -> None:
    totals = {"0": 10, "1": 16}
    ledger = VramLedger(totals)
    held: dict[str, tuple[str, int]] = {}
    for op, n, gpu, size in operations:
        wid = f"w{n}"
        if op == "reserve":
            if wid in held:
                continue
            used = sum(s for g, s in held.values() if g == gpu)
            try:
                ledger.reserve(wid, "m", gpu, size)
            except ModelIncompatible:
                assert size > totals[gpu]
            except InsufficientVram:
                assert used + size > totals[gpu] >= size
            else:
                assert used + size <= totals[gpu]
                held[wid] = (gpu, size)
        else:
            ledger.release(wid)
            held.pop(wid, None)
        for g, total in totals.items():
            reserved = sum(s for gg, s in held.values() if gg == g)
            assert ledger.reserved(g) == reserved <= total
            assert ledger.free(g) == total - reserved
