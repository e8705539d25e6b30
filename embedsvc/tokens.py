"""A model's tokenizer run from its ``tokenizer.json`` by the ``tokenizers`` library alone.

Why: importing transformers imports torch, and sentence-transformers adds more: about
530 MB resident before a single weight is loaded, in a process that runs the model with
ONNX Runtime and needs nothing of them but token ids. transformers' fast tokenizers run
this same file through this same library, so the ids and offsets are theirs; whether they
really agree for a model (a tokenizer configuration can override the file) is checked on
probe texts when the model is exported (:mod:`embedsvc.onnx_export`), and only a model
that passed is tokenised this way.

:class:`FileTokenizer` answers the calls embedsvc makes of a transformers tokenizer, with
the same arguments and results, so the splitter and the encoder take either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Texts a tokenizer must treat as transformers' does before it replaces it: accents and
# case, CJK, symbols, odd whitespace, zero-width characters, a word past the vocabulary.
PROBES = (
    "hello",
    "Vitamin D deficiency and COVID-19: a meta-analysis (n=1,024; p<0.05).",
    "Crème brûlée, naïve résumé, ÀÉÎÕÜ ß æ ø",
    "漢字かなカナ 한국어 ΑΒΓ αβγ Кириллица",
    "  spaced\tout\nlines  ",
    "zero\u200bwidth\ufeff and \u00a0no-break",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "✓ → ∑ ∞ ≤ 🙂",
    "",
)


class FileTokenizer:
    """Token ids and character offsets from a ``tokenizer.json``, as transformers gives them.

    Args:
        path: the model's ``tokenizer.json``.
        pad_token_id: id that pads a batch (transformers reads it from the configuration).
    """

    def __init__(self, path: Path, pad_token_id: int):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        # the file may carry a batch's truncation and padding: embedsvc cuts and pads itself
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.pad_token_id = pad_token_id

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True,
                 truncation: bool = False, max_length: int | None = None,
                 return_offsets_mapping: bool = False, verbose: bool = False) -> dict[str, Any]:
        """``input_ids`` (and ``offset_mapping``) of one text or each of several.

        Truncation keeps the first ``max_length`` tokens, which is transformers' rule for a
        single sequence without special tokens, the one way embedsvc truncates.
        """
        if truncation and add_special_tokens:
            raise ValueError("truncation is supported without special tokens only")
        single = isinstance(texts, str)
        encoded = self._tokenizer.encode_batch([texts] if single else texts,
                                               add_special_tokens=add_special_tokens)
        cut = max_length if truncation and max_length is not None else None
        out: dict[str, Any] = {"input_ids": [e.ids[:cut] for e in encoded]}
        if return_offsets_mapping:
            out["offset_mapping"] = [e.offsets[:cut] for e in encoded]
        return {key: value[0] for key, value in out.items()} if single else out

    def convert_ids_to_tokens(self, ids: int | list[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(i) for i in ids]


def agrees(reference: Any, candidate: Any) -> bool:
    """Whether ``candidate`` tokenises the probes exactly as ``reference`` (transformers')
    does: the same ids with and without special tokens, and the same offsets."""
    probes = list(PROBES)
    for special in (False, True):
        if reference(probes, add_special_tokens=special)["input_ids"] != \
                candidate(probes, add_special_tokens=special)["input_ids"]:
            return False
    ours = candidate(probes, add_special_tokens=False, return_offsets_mapping=True)
    theirs = reference(probes, add_special_tokens=False, return_offsets_mapping=True)
    return [[tuple(o) for o in row] for row in theirs["offset_mapping"]] == \
        [[tuple(o) for o in row] for row in ours["offset_mapping"]]
