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

Texts are cut before they are tokenized (`TextEncoder.encode`): tokenizing a whole 50 MB text to keep its first
max_length tokens took 99 s and 7 GB. A text longer than `cut_chars` characters is tokenized from its first
`cut_chars` characters, and the cut is kept only when it provably gives the ids of the whole text's first
max_length tokens; else the bound is doubled (at worst up to the whole text). The proof, on the cut text's
tokens without special tokens or truncation (`Encoding.word_ids`, `Encoding.offsets`):

- A `tokenizers` pipeline normalizes the text, splits it into pre-tokens ("words": at whitespace and punctuation
  for BERT, by GPT-2's regex for byte-level BPE, at "▁" for SentencePiece's Metaspace) and runs the model (WordPiece,
  BPE, Unigram) on each word on its own. So the tokens of a word depend only on that word.
- Cutting the text changes only its end: the word the cut falls in (or the whitespace it falls in; WordPiece's
  over-long word that is one [UNK] whole but real pieces when cut short; a byte-level BPE space that would join the
  next word; a combining sequence or Hangul syllable that normalizes differently) is the cut text's last word. The
  normalizers and pre-tokenizers of these tokenizers look at most a few characters ahead (a lookahead in a split
  regex, a combining sequence, a final sigma), all inside that last word.
- So when the last of the first `keep` content tokens (max_length minus the special tokens the post-processor
  adds) belongs to a word before the cut text's last word, and ends at least `CUT_MARGIN` characters before the
  cut, those `keep` tokens are the whole text's first `keep` tokens, id for id; truncation keeps exactly them and
  the post-processor adds the same special tokens, so the encoding's ids, mask and type ids are the whole text's.
  The cut text also has more than `keep` tokens, so the encoding is marked truncated (`overflowing`) as the whole
  text's is.
- When that cannot be shown (fewer than `keep` tokens in the cut: long runs of whitespace or of characters the
  normalizer drops, words longer than the cut; a tokenizer without a pre-tokenizer, or one that does not split, whose
  whole text is one word) the bound doubles, so a text is tokenized at most about twice over the length it needs.

tests/test_bounded_input.py holds cut against uncut tokenization on adversarial texts for MiniLM's WordPiece, a
byte-level BPE and a SentencePiece-style Unigram tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from poolx.errors import BrokenExportError, first_line
from poolx.manifest import Manifest

CUT_CHARS_PER_TOKEN = 8  # the first cut: 8 characters per kept token (English averages about 4.5 with its space)
CUT_MIN_CHARS = 1024
CUT_MARGIN = 32  # characters between the last kept token and the cut


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

        path = self.path = Path(directory) / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception for unreadable files
            raise BrokenExportError(f"{path} is not a readable tokenizer ({e}); re-export") from None
        info = manifest.tokenizer
        self.max_length = manifest.max_length
        self._tok.enable_truncation(self.max_length)
        self._tok.no_padding()
        self._raw: Any = None  # the same tokenizer without truncation, made for the first text that is cut
        self._keep = max(self.max_length - self._tok.num_special_tokens_to_add(False), 1)
        self.cut_chars = max(CUT_MIN_CHARS, CUT_CHARS_PER_TOKEN * self.max_length)
        self._compact = _wordpiece_compactor(self._tok)
        self._pad_id = int(info["pad_token_id"])
        self.input_names = manifest.io.input_names

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Pad to the longest text, or to `pad_to` (at least the longest) to exercise padding."""
        return self.arrays(self.encode(texts), pad_to)

    def encode(self, texts: Sequence[str], prefix: str = "") -> list:
        """`tokenizers.Encoding`s of `prefix` + each text, truncated to max_length (a truncated one has
        `overflowing` parts). A long text is cut before it is tokenized, at a bound that is shown not to change its
        ids (see the module docstring), so the work and memory are those of its first max_length tokens. A panic of
        the tokenizer (its Rust code: a pathological regex in an edited tokenizer.json) is a BrokenExportError."""
        try:
            return self._encode(texts, prefix)
        except BaseException as e:  # pyo3's PanicException derives from BaseException, not Exception
            if type(e).__name__ != "PanicException":
                raise
            raise BrokenExportError(
                f"{self.path} failed on a text ({first_line(e)[:200]}); its pipeline (a "
                "pre-tokenizer regex?) cannot tokenize it: re-export with the model's own tokenizer"
            ) from None

    def _encode(self, texts: Sequence[str], prefix: str) -> list:
        texts = texts if isinstance(texts, list) else list(texts)
        out: list[Any] = [None] * len(texts)
        whole = [i for i, t in enumerate(texts) if len(t) <= self.cut_chars]
        if len(whole) == len(texts):  # no text is long: one call, as before
            return self._tok.encode_batch([prefix + t for t in texts] if prefix else texts)
        for i, encoding in zip(whole, self._tok.encode_batch([prefix + texts[i] for i in whole])):
            out[i] = encoding
        pending = {i: t for i, t in enumerate(texts) if len(t) > self.cut_chars}
        limit = self.cut_chars
        while pending:
            cuts = [prefix + t[:limit] for t in pending.values()]
            left: dict[int, str] = {}
            for (i, text), cut, raw in zip(pending.items(), cuts, self._raw_encode(cuts)):
                if self._proven(raw, len(cut)):
                    out[i] = self._tok.post_process(raw)
                else:  # not shown by this cut: compacted once (WordPiece), then cut twice as far on
                    left[i] = self._compact(text) if self._compact and limit == self.cut_chars else text
            limit *= 2
            done = [i for i, t in left.items() if len(t) <= limit]  # the next bound holds the whole text
            for i, encoding in zip(done, self._tok.encode_batch([prefix + left[i] for i in done])):
                out[i] = encoding
            pending = {i: t for i, t in left.items() if len(t) > limit}
        return out

    def _raw_encode(self, texts: list[str]) -> list:
        """Encodings of `texts` without special tokens and without truncation."""
        if self._raw is None:
            from tokenizers import Tokenizer

            raw = Tokenizer.from_str(self._tok.to_str())
            raw.no_truncation()
            raw.no_padding()
            self._raw = raw
        return self._raw.encode_batch(texts, add_special_tokens=False)

    def _proven(self, raw: Any, cut: int) -> bool:
        """Whether the first `keep` tokens of `raw` (the encoding of a text cut after `cut` characters, no special
        tokens, not truncated) are the uncut text's: there are more than `keep`, and the last kept one is in a word
        before the cut text's last word and ends CUT_MARGIN characters before the cut."""
        keep = self._keep
        words = raw.word_ids
        if len(words) <= keep:
            return False
        word = words[keep - 1]
        last = next((w for w in reversed(words) if w is not None), None)
        if word is None or last is None or word >= last:
            return False
        return bool(raw.offsets[keep - 1][1] <= cut - CUT_MARGIN)

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
        return [max(len(e.ids), 1) for e in self.encode(texts)]


def _wordpiece_compactor(tokenizer: Any) -> Callable[[str], str] | None:
    """For a BERT-style WordPiece tokenizer (BERT normalizer or none, a pre-tokenizer that splits at whitespace,
    WordPiece), a function that shortens a text without changing a single one of its token ids; None for others.

    The cut cannot show anything inside one word longer than the cut, or after a run of whitespace longer than it
    (`x` * 50,000,000 is one word: tokenizing it whole took 82 s and 2.9 GB), but for these tokenizers both can be
    shortened. Whitespace (space, tab, line ends) only separates words and is dropped by the pre-tokenizer, so a run
    of it is one space as well. A run of ASCII letters and digits lies inside one word (the normalizer maps each to
    one such character, lowercased at most; no pre-tokenizer splits there), and a word of more than WordPiece's
    max_input_chars_per_word characters is one [UNK] whatever its length, so a run longer than that keeps its first
    max_input_chars_per_word + 1 characters: its word is still one [UNK]. Texts whose added tokens (matched before
    normalization) hold whitespace or such a run are left alone."""
    import re

    from tokenizers import models, normalizers, pre_tokenizers

    model, normalizer, pre = tokenizer.model, tokenizer.normalizer, tokenizer.pre_tokenizer
    splits_at_whitespace = (pre_tokenizers.BertPreTokenizer, pre_tokenizers.Whitespace, pre_tokenizers.WhitespaceSplit)
    if not (isinstance(model, models.WordPiece) and isinstance(pre, splits_at_whitespace)
            and (normalizer is None or isinstance(normalizer, normalizers.BertNormalizer))):
        return None
    longest = int(model.max_input_chars_per_word) + 1
    spaces = re.compile(r"[ \t\n\r]{2,}")
    run = re.compile(rf"[A-Za-z0-9](?<![A-Za-z0-9].)[A-Za-z0-9]{{{longest},}}")  # only from a run's start: linear
    for token in tokenizer.get_added_tokens_decoder().values():
        if re.search(r"[ \t\n\r]", token.content) or re.search(rf"[A-Za-z0-9]{{{longest},}}", token.content):
            return None

    def compact(text: str) -> str:
        text = spaces.sub(" ", text)
        return run.sub(lambda m: text[m.start():m.start() + longest], text)

    return compact
