"""The built-in verification texts: real text in several languages and scripts, from an empty string and a
one-token word to inputs far beyond 512 tokens (so truncation is exercised at any max_length)."""

from __future__ import annotations

from pathlib import Path

from poolx.errors import UsageError

MAX_USER_TEXTS = 100  # `poolx verify --texts`: the first 100 non-blank lines

_LONG_EN = (
    "Numerical fidelity is the product. An exported graph is only useful if it computes what the eager model "
    "computes, on real text, at every batch size and length a production pipeline will send it, with padding. "
)
_LONG_DE = "Die Donaudampfschifffahrtsgesellschaftskapitänsmütze liegt auf dem Tisch neben der Zeitung von gestern. "

VERIFY_TEXTS: tuple[str, ...] = (
    "",
    "a",
    "Hello!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on a street corner while people walk by.",
    "Pooling turns a sequence of token vectors into one vector per text.",
    "Der schnelle braune Fuchs springt über den faulen Hund, und niemand merkt es.",
    "Le modèle exporté doit produire les mêmes vecteurs que le modèle PyTorch, à la virgule flottante près.",
    "¿Dónde está la biblioteca? Está al lado de la estación de tren, cerca del río.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "机器学习模型的导出需要验证数值的一致性。",
    "トランスフォーマーの出力を処理する手法が書かれたノートブックを読みました。",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "त्वरित भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "🙂 emojis, URLs like https://example.com/a?b=c and numbers 3.14159 mixed in",
    "def mean_pool(h, m): return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)",
    "NASA's James Webb telescope observed the galaxy cluster SMACS 0723 in July 2022.",
    " ".join(["token"] * 40),
    _LONG_EN * 6,  # ~230 tokens
    _LONG_DE * 20 + _LONG_EN * 10,  # far beyond 512 tokens
    _LONG_EN * 30,  # ~1100 tokens
)


def read_texts(path: Path, option: str, limit: int | None = MAX_USER_TEXTS) -> tuple[str, ...]:
    """The non-blank lines of a UTF-8 text file (the first `limit`), for `--texts` and `--calibration`; a one-line
    UsageError naming `option` for a missing, unreadable, non-UTF-8 or empty file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{option} {path} is not UTF-8 (byte {e.start}); convert it first") from None
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}") from None
    texts = tuple(line for line in lines if line.strip())[:limit]
    if not texts:
        raise UsageError(f"{option} {path} has no text; write one text per line")
    return texts
