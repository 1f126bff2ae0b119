"""Memory and time are bounded by the work, not by the input (issue 14, items 4 and 5).

Item 4: a long text is cut before it is tokenized (poolx.runtime.tokenizer), and the cut never changes the ids of
its first max_length tokens: cut against uncut tokenization on adversarial texts for MiniLM's WordPiece, a byte-level
BPE and a SentencePiece-style Unigram tokenizer (both trained here, offline), and a long text costs what its first
tokens cost. Item 5 (the corpus readers' bounds) is further down."""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from poolx.parity.texts import VERIFY_TEXTS
from poolx.runtime.tokenizer import TextEncoder

# ------------------------------------------------------------------------------------------------ item 4: the cut


def _train(kind: str, directory: Path) -> Path:
    """A byte-level BPE (GPT-2/RoBERTa's pipeline) or a Unigram with NFKC and Metaspace (SentencePiece's, as
    XLM-R and DeBERTa-v2 export it), trained on the verify texts: tiny vocabularies, so words split into many
    pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    corpus = list(VERIFY_TEXTS) * 3
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0))
    else:
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.train_from_iterator(corpus, trainers.UnigramTrainer(
            vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory, minilm) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {"wordpiece": minilm, "bpe": _train("bpe", root / "bpe"), "unigram": _train("unigram", root / "unigram")}


def text_encoder(directory: Path, max_length: int) -> TextEncoder:
    manifest = SimpleNamespace(tokenizer={"pad_token_id": 0}, max_length=max_length,
                               io=SimpleNamespace(input_names=["input_ids", "attention_mask", "token_type_ids"]))
    return TextEncoder(directory, manifest)  # type: ignore[arg-type]


PIECES = [
    "word", " ", "  ", "\t", "\n", "\r\n", " " * 200, ",", ".", "don't", "1234567", "é", "e\u0301",
    "a\u0301\u0316\u0301\u0316", "\u0301" * 50, "日本語", "各", "\u1100\u1161\u11a8", "ΣΑΣ ", "😀👩🏽‍💻", "\x00", "\u200b",
    "x" * 99, "x" * 100, "x" * 101, "x" * 150, "ab" * 70, "[SEP]", "<s>", "</s>",
    "https://example.com/" + "path/to?q=v&" * 30,
]


def adversarial_texts(seed: int = 0, count: int = 100) -> list[str]:
    """Random concatenations of the pieces that make tokenizers non-local (over-long words that are one [UNK] but
    real pieces when cut short, runs of whitespace, combining marks, Hangul jamo, final sigma, CJK, emoji, special
    tokens written in the text, a long URL), and long texts of one kind."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 40))) for _ in range(count)]
    return texts + [
        "x" * 3000, " " * 3000 + "end", "\x00" * 2000 + " after", "a " * 1000, "日" * 1000, "😀" * 1000,
        "x" * 101 + " y" * 500, "word " * 500, "e\u0301" * 1000 + " z",
    ]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_cut_texts_give_the_uncut_ids(tokenizer_dirs, kind):
    from tokenizers import Tokenizer

    directory = tokenizer_dirs[kind]
    texts = adversarial_texts()
    for max_length in (8, 64):
        encoder = text_encoder(directory, max_length)
        uncut = Tokenizer.from_file(str(directory / "tokenizer.json"))
        uncut.enable_truncation(max_length)
        uncut.no_padding()
        want = uncut.encode_batch(texts)
        for cut_chars in (16, 100):  # small first cuts: most texts are cut, many more than once
            encoder.cut_chars = cut_chars
            around = [t[:n] for t in texts[:20] for n in range(cut_chars - 3, cut_chars + 4)]  # at the bound
            got = encoder.encode(texts + around)
            for text, g, w in zip(texts + around, got, want + uncut.encode_batch(around)):
                assert (g.ids, g.type_ids, g.attention_mask) == (w.ids, w.type_ids, w.attention_mask), (
                    kind, max_length, cut_chars, text[:120], g.tokens, w.tokens)
                assert bool(g.overflowing) == bool(w.overflowing)  # truncated texts are still counted as such
            prompted = encoder.encode(texts[:50], prefix="query: ")
            assert [e.ids for e in prompted] == [e.ids for e in uncut.encode_batch(["query: " + t for t in texts[:50]])]


def test_the_cut_is_taken_and_a_naive_cut_would_change_ids(tokenizer_dirs, monkeypatch):
    """The test above is not passing by tokenizing whole texts: most long texts are settled by a cut. And it can
    fail: a cut at the bound without the proof (or the WordPiece compaction keeping one character too few) gives
    other ids on these texts."""
    import re

    import poolx.runtime.tokenizer as tokenizer

    texts = adversarial_texts()
    encoder = text_encoder(tokenizer_dirs["wordpiece"], 16)
    encoder.cut_chars = 40
    proven = []
    real = TextEncoder._proven
    monkeypatch.setattr(TextEncoder, "_proven", lambda self, raw, cut: proven.append(real(self, raw, cut)) or proven[-1])
    expected = [e.ids for e in encoder.encode(texts)]
    assert sum(proven) > 50
    monkeypatch.setattr(TextEncoder, "_proven", lambda self, raw, cut: len(raw.ids) > self._keep)  # no proof
    assert sum(e.ids != x for e, x in zip(encoder.encode(texts), expected)) > 20
    monkeypatch.setattr(TextEncoder, "_proven", real)
    encoder._compact = lambda text: re.sub(r"[A-Za-z0-9]{101,}", lambda m: m.group()[:100], text)
    assert sum(e.ids != x for e, x in zip(encoder.encode(texts), expected)) > 5
    assert tokenizer._wordpiece_compactor(encoder._tok) is not None
    assert text_encoder(tokenizer_dirs["bpe"], 16)._compact is None  # the compaction is WordPiece's only


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: the peak resident set size starts again from the current one
        return True
    except OSError:
        return False


def test_a_long_text_costs_what_its_first_tokens_cost(tokenizer_dirs):
    """4 MB texts (uncut: 3-8 s and ~0.6-1 GB each, growing with the text) take milliseconds and no memory to
    speak of: words, one word of 4M letters (one [UNK]), 4M spaces before a word."""
    encoder = text_encoder(tokenizer_dirs["wordpiece"], 256)
    n = 4_000_000
    texts = {"words": "lorem ipsum dolor " * (n // 18), "one word": "x" * n, "spaces": " " * n + " end",
             "cjk": "日本語" * (n // 3)}
    measured = _reset_peak_rss()
    for name, text in texts.items():
        base = _peak_rss_mb()
        start = time.perf_counter()
        encoding = encoder.encode([text])[0]
        seconds = time.perf_counter() - start
        assert seconds < 1.0, (name, seconds)
        if measured:
            assert _peak_rss_mb() - base < 60, name
        assert len(encoding.ids) == (256 if name in ("words", "cjk") else 3)


def test_the_embedder_cuts_long_texts(bert_mean):
    """The Embedder (the corpus job and the server tokenize through it): a 4 MB text embeds in well under a
    second, with its prompt, as its first tokens do."""
    from poolx.runtime.embedder import Embedder

    embedder = Embedder(bert_mean, "cpu")
    long = "the quick brown fox jumps " * 160_000
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="truncated"):
        vectors = embedder.embed([long, "short"])
    assert time.perf_counter() - start < 1.0
    np.testing.assert_allclose(vectors, embedder.embed([long[:2000], "short"]), atol=1e-6)
    assert embedder.truncated == 2


# ------------------------------------------------------------------------------------------- item 5: the readers


@pytest.fixture
def small_limits(monkeypatch):
    """The readers' bounds at 1 MiB characters per line and 256 KiB per batch (64 Mi and 32 Mi in use)."""
    import poolx.corpus.reader as reader

    monkeypatch.setattr(reader, "MAX_LINE_CHARS", 1 << 20)
    monkeypatch.setattr(reader, "BATCH_CHARS", 1 << 18)
    return reader


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_a_line_without_end_is_refused_naming_it(small_limits, tmp_path, suffix):
    from poolx.corpus import read_corpus
    from poolx.errors import UsageError

    path = tmp_path / f"corpus{suffix}"
    head = {".txt": "a text\n", ".jsonl": '{"text": "a text"}\n', ".csv": "text\na text\n"}[suffix]
    path.write_text(head + "y" * (3 << 20))  # no line end: a binary, a file cut short, a device
    with pytest.raises(UsageError, match=r"line (2|3) is longer than 1,048,576 characters") as error:
        read_corpus(path)
    assert "\n" not in str(error.value)
    longest = {".txt": "y" * (1 << 20), ".jsonl": '{"text": "' + "y" * ((1 << 20) - 12) + '"}',
               ".csv": "y" * (1 << 20)}[suffix]
    path.write_text(head + longest + "\n")  # at the bound: read
    assert len(read_corpus(path).texts[1]) == len(longest) - (12 if suffix == ".jsonl" else 0)


def test_a_csv_field_of_many_lines_is_bounded_too(small_limits, tmp_path):
    from poolx.corpus import read_corpus
    from poolx.errors import UsageError

    path = tmp_path / "corpus.csv"
    path.write_text('text\n"an unclosed quote\n' + "more text\n" * 200_000)
    with pytest.raises(UsageError, match=r"line \d+: a field is longer than 1,048,576 characters"):
        read_corpus(path)


def test_batches_end_on_characters_as_well_as_rows(small_limits, tmp_path):
    from poolx.corpus import open_corpus

    path = tmp_path / "corpus.txt"
    path.write_text(("x" * 100_000 + "\n") * 10 + "short\n" * 10)
    with open_corpus(path) as reader:
        sizes = [len(b.texts) for b in reader]
    assert sizes == [3, 3, 3, 11]  # 256 KiB of characters, then the rest (under 4,096 rows)


DEV_ZERO = """
import sys
import poolx.corpus.reader as reader
from poolx.corpus import open_corpus
from poolx.errors import UsageError
reader.MAX_LINE_CHARS = 1 << 20
try:
    with open_corpus(sys.argv[1]) as corpus:
        for batch in corpus:
            pass
except UsageError as e:
    print(e)
"""


def test_dev_zero_is_refused_after_a_bounded_read(tmp_path):
    """/dev/zero (here through a .txt link) never ends and has no line end: it was counted for a progress bar
    forever, then read as one line until memory ran out. Now it is not counted (not a regular file) and refused
    at the line bound. In a process of its own, bounded in time and memory."""
    import subprocess
    import sys

    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    done = subprocess.run([sys.executable, "-c", DEV_ZERO, str(zero)], capture_output=True, text=True, timeout=30,
                          preexec_fn=lambda: __import__("resource").setrlimit(
                              __import__("resource").RLIMIT_AS, (4 << 30, 4 << 30)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{zero} line 1 is longer than 1,048,576 characters; a line holds one text (is this a text file, with line ends?)"


def test_not_utf8_is_located_without_reading_a_line_whole(tmp_path, monkeypatch):
    """The error for a file that is not UTF-8 reads it again in blocks: a bad byte 3 MB into a line without end is
    named by line and offset, and a multi-byte character cut by a block boundary is no error."""
    from poolx.corpus import read_corpus
    from poolx.errors import UsageError

    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first\n" + "é".encode() * (1 << 19) + b"\xff" + b"z" * (3 << 20))
    with pytest.raises(UsageError, match=rf"byte 0xff at line 2 \(byte offset {6 + (1 << 20)}\)"):
        read_corpus(path)


def test_reading_a_corpus_ten_times_longer_takes_no_more_memory(tmp_path):
    """The readers stream: 100,000 rows peak where 10,000 do (.txt and .jsonl with ids, through the duplicate-id
    check; Linux's peak RSS, reset between the two)."""
    from poolx.corpus import open_corpus

    if not _reset_peak_rss():
        pytest.skip("needs /proc/self/clear_refs")
    peaks = {}
    for rows in (10_000, 100_000):
        path = tmp_path / f"c{rows}.jsonl"
        path.write_text("".join(f'{{"id": "doc-{i}", "text": "text {i} on topic {i % 13}"}}\n' for i in range(rows)))
        _reset_peak_rss()
        base = _peak_rss_mb()
        with open_corpus(path, id_column="id") as reader:
            assert sum(len(b.texts) for b in reader) == rows
        peaks[rows] = _peak_rss_mb() - base
        path.unlink()
    assert peaks[100_000] < peaks[10_000] + 4, peaks  # the id check keeps 8 bytes per id: 0.8 MB
