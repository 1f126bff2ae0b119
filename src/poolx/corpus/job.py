"""`poolx embed --input FILE --output FILE` as a library call: stream a corpus file through an Embedder into an
embeddings file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from poolx.corpus.reader import BATCH_ROWS, CorpusReader, PathLike, open_corpus
from poolx.corpus.writer import EmbeddingWriter, check_output


@dataclass(frozen=True)
class EmbedFileResult:
    rows: int  # embeddings written
    seconds: float  # reading, embedding and writing


def embed_file(
    embedder: Any, input: Union[PathLike, CorpusReader], output: PathLike, *, column: str = "text",
    id_column: Optional[str] = None, batch_size: int = 32, normalize: bool = False, force: bool = False,
    progress: Optional[Callable[[int], None]] = None, chunk_rows: int = BATCH_ROWS, prompt_name: Optional[str] = None,
) -> EmbedFileResult:
    """Embed every text of `input` (a corpus file, or a reader from `open_corpus`, which this call then closes)
    with `embedder` (an `Embedder`) and write the embeddings to `output`, row i for input row i, all or nothing.

    The corpus is read `chunk_rows` texts at a time; each chunk is embedded (sorted by length within, in model
    batches of at most `batch_size`) and written before the next is read, so memory does not grow with the file.
    `progress(n)` is called after each model batch with its number of texts. With `id_column` the ids go into the
    output's `id` field (.parquet/.jsonl only). The export's default prompt, or `prompt_name`, is prepended to
    each text (`Embedder.prompt`). Problems with the files are one-line `UsageError`s; the output is
    written to a hidden temporary file and moved into place only when every row is written."""
    start = time.perf_counter()
    embedder.prompt(prompt_name)  # an unknown prompt is refused before anything is read or written
    if isinstance(input, CorpusReader):
        reader = input
        check_output(output, force, input_path=reader.source, ids=reader.id_column is not None)
    else:
        check_output(output, force, input_path=input, ids=id_column is not None)
        reader = open_corpus(input, column, id_column, batch_rows=chunk_rows)
    with reader, EmbeddingWriter(output, embedder.width, ids=reader.id_column is not None, force=force) as writer:
        for batch in reader:
            vectors = embedder.embed(batch.texts, batch_size=batch_size, normalize=normalize, progress=progress,
                                     prompt_name=prompt_name)
            writer.write(vectors, ids=batch.ids)
    return EmbedFileResult(rows=writer.rows_written, seconds=time.perf_counter() - start)
