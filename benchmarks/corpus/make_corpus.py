"""Build poolx's benchmark corpus: 10,000 real English texts with a natural length mix (5-300 MiniLM tokens), the
prose of the documentation of Python's standard library (its docstrings and the `pydoc` topics, PSF licence) and of
numpy, scipy, scikit-learn, pandas and PyTorch (their docstrings, BSD licences; the versions installed when it was built),
written to `src/poolx/data/corpus.txt.gz`, one text per line.

    python benchmarks/corpus/make_corpus.py     # deterministic for one Python version; the file is committed

Chunks of documents, as a retrieval pipeline embeds them: each docstring and topic is split on blank lines; code
(doctest prompts, indented blocks), tables and one-word lines are dropped; whitespace is collapsed; the paragraphs
left are joined in order into chunks of at most 300 tokens of all-MiniLM-L6-v2's tokenizer (a one-line docstring
stays one short text); chunks under 5 tokens and duplicates go. The lengths are whatever the documentation has
(no stratification). 10,000
are drawn with a fixed seed and written in the drawn order (not sorted by length: poolx's batching must do that)."""

from __future__ import annotations

import gzip
import importlib
import inspect
import random
import re
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "src" / "poolx" / "data" / "corpus.txt.gz"
COUNT, MIN_TOKENS, MAX_TOKENS, SEED = 10_000, 5, 300, 13
THIRD_PARTY = ("numpy", "scipy", "sklearn", "pandas", "torch")
SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "pydoc_data",
        "ensurepip", "venv", "__main__", "xxsubtype", "msvcrt", "winreg", "winsound", "_")


def modules() -> list[str]:
    """The standard library's modules and numpy, scipy, scikit-learn, pandas and PyTorch (BSD licences), packages'
    submodules included (tests and GUI left out)."""
    import pkgutil

    names = []
    for name in sorted(sys.stdlib_module_names) + list(THIRD_PARTY):
        if name.startswith(SKIP):
            continue
        names.append(name)
        module = _import(name)
        if module is not None and hasattr(module, "__path__"):
            names += sorted(f"{name}.{m.name}" for m in pkgutil.iter_modules(module.__path__)
                            if not m.name.startswith(("_", "test")))
    return names


def _import(name: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:
        return None


def docstrings() -> list[str]:
    docs: list[str] = []
    for name in modules():
        module = _import(name)
        if module is None:
            continue
        objects = [module]
        for _, member in sorted(vars(module).items(), key=lambda kv: kv[0]):
            if getattr(member, "__module__", None) == name and (inspect.isclass(member) or inspect.isroutine(member)):
                objects.append(member)
                if inspect.isclass(member):
                    objects += [m for _, m in sorted(vars(member).items(), key=lambda kv: kv[0]) if inspect.isroutine(m)]
        docs += [d for d in (inspect.getdoc(o) for o in objects) if d]
    import pydoc_data.topics

    docs += [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    return docs


def paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [line for line in block.splitlines() if not re.fullmatch(r"\s*([-=~^*+]{3,}|\.\. .*)", line)]
        if not lines or any(line.lstrip().startswith((">>>", "... ", "$ ", "|", "+-")) for line in lines):
            continue  # doctests, shell sessions, tables
        text = " ".join(line.strip() for line in lines)
        if len(text.split()) >= 3 and sum(c.isalpha() for c in text) > 0.6 * len(text):
            out.append(text)
    return out


def chunks(parts: list[str], count) -> list[str]:
    """A document's paragraphs joined in order into chunks of at most MAX_TOKENS tokens, as a retrieval pipeline's
    chunker does (a paragraph longer than that alone is dropped)."""
    out, current = [], ""
    for part in parts:
        joined = f"{current} {part}".strip()
        if count(joined) <= MAX_TOKENS:
            current = joined
            continue
        if current:
            out.append(current)
        current = part if count(part) <= MAX_TOKENS else ""
    return out + ([current] if current else [])


def main() -> None:
    from poolx.models.loading import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source(None))
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731
    seen: set[str] = set()
    texts = []
    for doc in docstrings():
        for text in chunks(paragraphs(doc), count):
            if text not in seen and count(text) >= MIN_TOKENS:
                seen.add(text)
                texts.append(text)
    if len(texts) < COUNT:
        sys.exit(f"only {len(texts)} paragraphs of {MIN_TOKENS}..{MAX_TOKENS} tokens; need {COUNT}")
    chosen = random.Random(SEED).sample(texts, COUNT)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        f.write(("\n".join(chosen) + "\n").encode())
    lengths = sorted(len(tokenizer(t)["input_ids"]) for t in chosen)
    q = lambda p: lengths[int(p * (len(lengths) - 1))]  # noqa: E731
    print(f"{OUT}: {COUNT} of {len(texts)} paragraphs, {OUT.stat().st_size / 1e6:.2f} MB; tokens "
          f"min {lengths[0]} p25 {q(.25)} median {q(.5)} p75 {q(.75)} p95 {q(.95)} max {lengths[-1]}, "
          f"total {sum(lengths)}")


if __name__ == "__main__":
    main()
