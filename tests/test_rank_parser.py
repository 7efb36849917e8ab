import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag.rerank.parser import parse_ranking

K = 9
FULL = list(range(1, 10))


@pytest.mark.parametrize(
    ("reply", "status", "first", "detail_part"),
    [
        ('{"ranking": [7, 1, 2, 3, 4, 5, 6, 8, 9], "reason": "leopard print"}', "ok", 7, ""),
        (
            'Sure! Here it is:\n```json\n{"ranking": [7,1,2,3,4,5,6,8,9], "reason": "x"}\n```',
            "ok",
            7,
            "",
        ),
        ('{"ranking": [7, 1, 2, 3, 4, 5, 6, 8], "reason": "x"}', "repaired", 7, "appended 9"),
        ('{"ranking": [7, 7, 1, 2, 3, 4, 5, 6, 8, 9]}', "repaired", 7, "dropped duplicate 7"),
        ('{"ranking": [6, 0, 1, 2, 3, 4, 5, 7, 8]}', "repaired", 7, "shifted 0-based"),
        ('{"ranking": [12, 3, 1, 2, 4, 5, 6, 7, 8, 9]}', "repaired", 3, "out-of-range 12"),
        ('{"ranking": ["7", "1", "2", "3", "4", "5", "6", "8", "9"]}', "ok", 7, ""),
        ("[7, 1, 2, 3, 4, 5, 6, 8, 9]\nReason: the case has leopard spots", "ok", 7, ""),
        ("Ranked list: 7, 1, 2, 3, 4, 5, 6, 8, 9\nReason: spots", "repaired", 7, "ranking line"),
        ("I think 7 is best, then 1 and 2.", "repaired", 7, "appended 3, 4, 5, 6, 8, 9"),
        ("The best is the leopard one, then the red.", "fallback", 1, "kept retrieval order"),
        ("", "fallback", 1, "no ranking"),
        ("\x00\x01garbage{{{[[[", "fallback", 1, ""),
        ('{"ranking": [], "reason": "none fit"}', "fallback", 1, ""),
        ("[42, 99]", "fallback", 1, "no valid candidate numbers"),
    ],
)
def test_reply_shapes(reply: str, status: str, first: int, detail_part: str) -> None:
    res = parse_ranking(reply, K)
    assert sorted(res.ranking) == FULL
    assert res.status == status, res.detail
    assert res.ranking[0] == first
    assert detail_part in res.detail


def test_reason_extracted() -> None:
    assert (
        parse_ranking('{"ranking": [1,2,3], "reason": "it has spots"}', 3).reason == "it has spots"
    )
    assert parse_ranking("[2, 1, 3]\nReason: bright red", 3).reason == "bright red"
    assert parse_ranking("[2, 1, 3]", 3).reason is None


def test_non_string_and_zero_k() -> None:
    assert parse_ranking(None, 3).ranking == [1, 2, 3]
    assert parse_ranking("[1]", 0).ranking == []


@settings(max_examples=300, deadline=None)
@given(reply=st.text(max_size=300), k=st.integers(min_value=1, max_value=25))
def test_any_reply_gives_a_permutation(reply: str, k: int) -> None:
    res = parse_ranking(reply, k)
    assert sorted(res.ranking) == list(range(1, k + 1))
    assert res.status in ("ok", "repaired", "fallback")


@settings(max_examples=200, deadline=None)
@given(
    nums=st.lists(st.integers(min_value=-5, max_value=30), max_size=30),
    k=st.integers(min_value=1, max_value=25),
    wrap=st.sampled_from(["json", "list", "text"]),
)
def test_numberish_replies_give_a_permutation(nums: list[int], k: int, wrap: str) -> None:
    body = ", ".join(map(str, nums))
    reply = {"json": f'{{"ranking": [{body}]}}', "list": f"[{body}]", "text": body}[wrap]
    res = parse_ranking(reply, k)
    assert sorted(res.ranking) == list(range(1, k + 1))
    if sorted(nums) == list(range(1, k + 1)) and wrap != "text":
        assert res.status == "ok" and res.ranking == nums
