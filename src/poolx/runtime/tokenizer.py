"""Tokenization for a poolx export: the exported tokenizer.json through the `tokenizers` library (no
transformers import), with the manifest's max_length and padding, producing exactly the graph's inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from poolx.errors import BrokenExportError
from poolx.manifest import Manifest


class TextEncoder:
    """texts -> {input name: int64 array (B, S)} for the graph's inputs, truncated to max_length, padded right."""

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
        """The graph's inputs for already encoded texts, padded right to the longest (or to `pad_to`)."""
        rows = len(encodings)
        length = max(max(len(e.ids) for e in encodings), pad_to or 0)
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
        return {name: arrays[name] for name in self.input_names}

    def lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]
