"""Turn a VLM's reply into a complete ranking. A pure function that never raises.

Whatever the model says, the result is a permutation of 1..k (1-based, as the model sees the
grid) plus a status: ``ok`` (the reply was a complete, valid ranking), ``repaired`` (what was
fixed is listed in ``detail``), or ``fallback`` (nothing usable: retrieval order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

_INT = re.compile(r"(?<![\d.])-?\d+(?!\.\d|\d)")
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_LIST_LINE = re.compile(r"(?im)^\s*(?:ranked list|ranking|ranks?|order)\s*[:=-]\s*(.+)$")
_REASON = re.compile(r"(?is)\breason(?:ing)?\b\s*[:=-]\s*[\"']?(.+)")
_MAX_REASON = 500


@dataclass(frozen=True)
class ParsedRanking:
    """A complete ranking (1-based candidate numbers, best first) and how it was obtained."""

    ranking: list[int]
    status: Literal["ok", "repaired", "fallback"]
    reason: str | None = None
    detail: str = ""


def _json_objects(text: str) -> list[dict]:
    decoder = json.JSONDecoder()
    found = []
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(text[i:])
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _ints(values: object) -> list[int] | None:
    if not isinstance(values, list):
        return None
    out: list[int] = []
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            out.append(v)
        elif isinstance(v, float) and v.is_integer():
            out.append(int(v))
        elif isinstance(v, str):
            out += [int(m) for m in _INT.findall(v)]
        elif isinstance(v, dict):  # [{"index": 3}, ...]
            for key in ("index", "id", "candidate", "number", "rank"):
                if isinstance(v.get(key), int):
                    out.append(v[key])
                    break
    return out


def _clean_reason(text: object) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split()).strip().strip("\"'}").strip()
    return text[:_MAX_REASON] or None


def _extract(reply: str) -> tuple[list[int] | None, str | None, str]:
    """(numbers as the model gave them, reason, where they came from)."""
    for obj in _json_objects(reply):
        for key in ("ranking", "ranked_list", "ranks", "order", "result", "results"):
            nums = _ints(obj.get(key))
            if nums:
                return nums, _clean_reason(obj.get("reason")), "json"
    reason_m = _REASON.search(reply)
    reason = _clean_reason(reason_m.group(1).splitlines()[0]) if reason_m else None
    for m in _BRACKET.finditer(reply):
        nums = [int(x) for x in _INT.findall(m.group(1))]
        if nums:
            return nums, reason, "list"
    line = _LIST_LINE.search(reply)
    if line:
        nums = [int(x) for x in _INT.findall(line.group(1))]
        if nums:
            return nums, reason, "line"
    body = reply[: reason_m.start()] if reason_m else reply
    nums = [int(x) for x in _INT.findall(body)]
    return (nums or None), reason, "numbers"


def parse_ranking(reply: object, k: int) -> ParsedRanking:
    """Parse ``reply`` into a permutation of 1..k; never raises (k < 1 gives an empty ranking)."""
    if k < 1:
        return ParsedRanking([], "fallback", None, "no candidates")
    text = reply if isinstance(reply, str) else ""
    try:
        nums, reason, source = _extract(text)
    except Exception:  # defensive: a parser bug must not cost the user their results
        nums, reason, source = None, None, "error"
    if not nums:
        return ParsedRanking(
            list(range(1, k + 1)),
            "fallback",
            reason,
            "no ranking in the reply; kept retrieval order",
        )
    fixes: list[str] = []
    raw = list(nums)
    if 0 in nums and k not in nums and all(0 <= n < k for n in nums):
        nums = [n + 1 for n in nums]
        fixes.append("shifted 0-based numbers")
    seen: set[int] = set()
    ranking: list[int] = []
    dropped_range, dropped_dup = [], []
    for n in nums:
        if not 1 <= n <= k:
            dropped_range.append(n)
        elif n in seen:
            dropped_dup.append(n)
        else:
            seen.add(n)
            ranking.append(n)
    if not ranking:
        return ParsedRanking(
            list(range(1, k + 1)),
            "fallback",
            reason,
            f"no valid candidate numbers (got {raw[:10]}); kept retrieval order",
        )
    missing = [n for n in range(1, k + 1) if n not in seen]
    ranking += missing
    if dropped_range:
        fixes.append("dropped out-of-range " + ", ".join(map(str, dropped_range[:10])))
    if dropped_dup:
        fixes.append("dropped duplicate " + ", ".join(map(str, dropped_dup[:10])))
    if missing:
        fixes.append("appended " + ", ".join(map(str, missing)))
    if source not in ("json", "list") and not fixes:
        fixes.append(
            f"read the ranking from {'a ranking line' if source == 'line' else 'loose numbers'}"
        )
    status: Literal["ok", "repaired"] = "repaired" if fixes else "ok"
    return ParsedRanking(ranking, status, reason, "; ".join(fixes))
