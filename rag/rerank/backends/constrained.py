"""Constrained decoding for listwise ranking: the model can only write a permutation of the
candidate numbers (see docs/architecture.md, "The VLM reranker")."""

from __future__ import annotations

from typing import Any


class PermutationLogitsProcessor:
    """Only lets the model write a permutation of the candidate numbers: an unused number,
    then a separator, ... and the end token after the k-th number (docs/architecture.md,
    "The VLM reranker")."""

    def __init__(
        self, prompt_len: int, candidate_ids: list[int], sep_id: int, end_ids: list[int]
    ) -> None:
        self.prompt_len = prompt_len
        self.candidates = list(candidate_ids)
        self.sep = sep_id
        self.end = list(end_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row in range(input_ids.shape[0]):
            generated = input_ids[row, self.prompt_len :].tolist()
            used = {t for t in generated if t in self.candidates}
            if len(used) == len(self.candidates):
                allowed = self.end
            elif not generated or generated[-1] == self.sep:
                allowed = [t for t in self.candidates if t not in used]
            else:
                allowed = [self.sep]
            mask[row, allowed] = 0.0
        return scores + mask


def single_token_ids(tokenizer: Any, texts: list[str]) -> list[int] | None:
    """Token ids of ``texts`` when each is exactly one token, else None."""
    ids = []
    for t in texts:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            return None
        ids.append(enc[0])
    return ids
