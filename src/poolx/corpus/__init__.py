"""Corpus files in, embedding files out: the one file I/O of `poolx embed` and of `poolx embed --engine ray`.

Inputs, by extension (case-insensitive), the same for both engines:

- `.txt`: one text per line, UTF-8, `\\n` or `\\r\\n` line ends; a final newline does not add a text. Blank lines
  are kept as empty texts, so output row i is always input line i. `column`/`id_column` do not apply.
- `.jsonl`, `.ndjson`, `.json`: JSON Lines, one object per line, the text in field `column` (a `.json` file is
  read as JSON Lines too, as Ray Data reads it; a file holding one JSON array is refused at its first line).
  Blank lines are skipped.
- `.csv`/`.tsv`: a header row, then one row per text; the text is the cell under `column`. Empty cells are empty
  texts; blank lines are skipped (so in a one-column file an empty text must be written as `""`). Quoting is
  strict: a stray quote is an error naming its line, never data silently merged or unquoted.
- `.parquet`: a file, or a directory of `*.parquet` part files read in name order; the string column `column`;
  nulls are refused.

Text files are decoded strictly as UTF-8 (a leading BOM is dropped). Ids, when `id_column` is given, must be on
every row, of one kind (strings, numbers or booleans), finite, within 64 bits, and unique. Without ids the
output keeps the input order, row for row; with them each output row carries its id.

Outputs: `.npy` (the float32 matrix, rows in input order), `.parquet` (`id` if any, then `embedding`, a
fixed_size_list<float32>) and `.jsonl` (`{"id": ..., "embedding": [...]}` per line; floats read back to the
same float32 bits). They are written to a hidden temporary file beside the target and moved onto it only when
every row is written, so an interrupted run never leaves a partial file.

Reading is bounded by the work, not the input: a line (.txt, .jsonl) or CSV field longer than 64 Mi characters
(`MAX_LINE_CHARS`) is refused, naming it, once that much is read (a file without line ends, /dev/zero); a batch
ends at 4,096 rows or 32 Mi characters; only a regular .txt file is counted for the progress bar (a pipe or a
device is read once). Texts are cut before they are tokenized (poolx.runtime.tokenizer), so a long line costs its
first max_length tokens. Reading streams: `open_corpus` yields batches of a few thousand rows (Python's csv module for .csv/.tsv, for its
strict quoting and line numbers; line iteration with orjson for JSON Lines, for line numbers; pyarrow's
`ParquetFile.iter_batches` for Parquet), and writing appends, so memory does not grow with the corpus (ids are
checked for duplicates with 8 bytes each). Every problem a user can cause is a one-line `UsageError` naming the
file and the line (or row); `poolx embed` prints it and exits 2. numpy and pyarrow are imported only when used,
so importing this package stays light.
"""

from poolx.corpus._common import INPUT_FORMATS, OUTPUT_FORMATS
from poolx.corpus.job import EmbedFileResult, embed_file
from poolx.corpus.reader import BATCH_ROWS, Batch, Corpus, CorpusReader, open_corpus, read_corpus
from poolx.corpus.writer import EmbeddingWriter, check_output

__all__ = [
    "BATCH_ROWS", "INPUT_FORMATS", "OUTPUT_FORMATS", "Batch", "Corpus", "CorpusReader", "EmbedFileResult",
    "EmbeddingWriter", "check_output", "embed_file", "open_corpus", "read_corpus",
]
