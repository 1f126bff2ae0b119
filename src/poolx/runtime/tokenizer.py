"""Tokenization for a poolx export: the exported tokenizer.json through the `tokenizers` library (no
transformers import), with the manifest's max_length and padding, producing exactly the graph's inputs.

Every text is at least one attended token. A tokenizer that adds no special tokens (Qwen2, Qwen3 and other
decoder tokenizers) turns "" into no tokens at all: its row would be all padding, which no pooler has a vector
for (the mean of nothing, the last of nothing), and a batch of only such texts would be 0 tokens long, which no
graph runs. Such a text is the manifest's pad token, attended (attention mask 1). For those tokenizers the pad
token is the end-of-text token (poolx.models.loading.ensure_pad_token gives one to a tokenizer that has none), so
the vector of "" is what the model makes of an end-of-text alone. `attend_empty_rows` is the rule, for the runtime
(TextEncoder), verify and the exporter's gate (which feed TextEncoder's arrays to the graph and to eager PyTorch
alike) and for transformers' tokenizer output compared with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from poolx.errors import BrokenExportError
from poolx.manifest import Manifest


def attend_empty_rows(arrays: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Padded (B, S) input arrays with every row that has no attended token (a text its tokenizer turned into no
    tokens) made the pad token with attention mask 1 at position 0, widened to one column when S is 0; the arrays
    of other rows are unchanged. Applied to transformers' tokenizer output, it gives what TextEncoder gives."""
    out = {name: np.asarray(a) for name, a in arrays.items()}
    mask = out["attention_mask"]
    if mask.shape[1] == 0:  # a batch of such texts only
        out = {name: np.zeros((a.shape[0], 1), dtype=a.dtype) for name, a in out.items()}
        if "input_ids" in out:
            out["input_ids"][:] = pad_id
        mask = out["attention_mask"]
    empty = ~mask.astype(bool).any(axis=1)
    if empty.any():
        out = {name: a.copy() for name, a in out.items()}
        out["attention_mask"][empty, 0] = 1
        if "input_ids" in out:
            out["input_ids"][empty, 0] = pad_id
        if "token_type_ids" in out:
            out["token_type_ids"][empty, 0] = 0
    return out


class TextEncoder:
    """texts -> {input name: int64 array (B, S)} for the graph's inputs, truncated to max_length, padded right;
    a text of no tokens is the pad token, attended (`attend_empty_rows`)."""

    def __init__(self, directory: str | Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        path = Path(directory) / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception for unreadable files
            raise BrokenExportError(f"{path} is not a readable tokenizer ({e}); re-export") from None
        info = manifest.tokenizer
        self.max_length = manifest.max_length
        self._tok.enable_truncation(self.max_length)
        self._tok.no_padding()
        self._pad_id = int(info["pad_token_id"])
        self.input_names = manifest.io.input_names

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad to the longest text, or to `pad_to` (at least the longest) to exercise padding."""
        return self.arrays(self.encode(texts), pad_to)

    def encode(self, texts: Sequence[str]) -> list:
        """`tokenizers.Encoding`s, truncated to max_length (a truncated one has `overflowing` parts)."""
        return self._tok.encode_batch(list(texts))

    def arrays(self, encodings: Sequence, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """The graph's inputs for already encoded texts, padded right to the longest (or to `pad_to`); an encoding
        of no tokens is the pad token, attended."""
        rows = len(encodings)
        length = max(max(len(e.ids) for e in encodings), pad_to or 0, 1)
        arrays = {
            "input_ids": np.full((rows, length), self._pad_id, dtype=np.int64),
            "attention_mask": np.zeros((rows, length), dtype=np.int64),
            "token_type_ids": np.zeros((rows, length), dtype=np.int64),
        }
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            arrays["input_ids"][row, :n] = enc.ids
            arrays["attention_mask"][row, :n] = enc.attention_mask
            arrays["token_type_ids"][row, :n] = enc.type_ids
        return attend_empty_rows({name: arrays[name] for name in self.input_names}, self._pad_id)

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in the graph's inputs: its tokens, and 1 for a text of none."""
        return [max(len(e.ids), 1) for e in self._tok.encode_batch(list(texts))]
