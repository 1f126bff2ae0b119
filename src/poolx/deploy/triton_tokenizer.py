"""The tokenizer model of a poolx Triton repository (Triton's Python backend): TEXT strings in, the graph's int64
inputs out. `write_triton_repo` copies this file to NAME_tokenizer/1/model.py, next to tokenizer.json and
poolx_tokenizer.json (max_length, pad_id, input_names, pad_multiple, prompt).

Triton's server image has no poolx, so this file imports only numpy, json, pathlib, `tokenizers` (install it in
the image) and Triton's `triton_python_backend_utils`. It tokenizes exactly as poolx's TextEncoder does (truncate
to max_length, pad right with the pad id) and then pads each request's rows up to a multiple of pad_multiple
tokens (at most max_length): Triton's dynamic batcher merges only requests whose shapes match, and the extra
padding, masked out, does not change the embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: load() and encode() still work
    pb_utils = None

SETTINGS = "poolx_tokenizer.json"
TEXT = "TEXT"


def load(directory: str | Path) -> tuple[Tokenizer, dict]:
    """The tokenizer (truncating to max_length, not padding) and the settings in a model version directory."""
    directory = Path(directory)
    settings = json.loads((directory / SETTINGS).read_text())
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(settings["max_length"])
    tokenizer.no_padding()
    return tokenizer, settings


def encode(
    tokenizer: Tokenizer, texts: list[str], max_length: int, pad_id: int, input_names: list[str],
    pad_multiple: int = 16, prompt: str = "",
) -> dict[str, np.ndarray]:
    """{input name: int64 (len(texts), length)}: the rows (each text after `prompt`, the export's default prompt)
    padded right with pad_id (mask 0) to the longest text rounded up to a multiple of pad_multiple, and to at most
    max_length."""
    encodings = tokenizer.encode_batch([prompt + t for t in texts] if prompt else list(texts))
    longest = max((len(e.ids) for e in encodings), default=0)
    length = min(max(1, -(-longest // pad_multiple)) * pad_multiple, max(max_length, longest))
    arrays = {
        "input_ids": np.full((len(encodings), length), pad_id, dtype=np.int64),
        "attention_mask": np.zeros((len(encodings), length), dtype=np.int64),
        "token_type_ids": np.zeros((len(encodings), length), dtype=np.int64),
    }
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        arrays["input_ids"][row, :n] = enc.ids
        arrays["attention_mask"][row, :n] = enc.attention_mask
        arrays["token_type_ids"][row, :n] = enc.type_ids
        if n == 0:  # a text of no tokens is the pad token, attended (poolx.runtime.tokenizer.attend_empty_rows)
            arrays["attention_mask"][row, 0] = 1
    return {name: arrays[name] for name in input_names}


def decode(value: bytes | str) -> str:
    """A TYPE_STRING element (bytes from Triton) as text; invalid UTF-8 raises UnicodeDecodeError."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8")


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.tokenizer, self.settings = load(Path(args["model_repository"]) / args["model_version"])
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in self.settings["input_names"]
        }

    def execute(self, requests: list) -> list:
        """One response per request; a request that fails (a text that is not UTF-8) gets an error response and
        the others are answered."""
        responses = []
        for request in requests:
            try:
                texts = [decode(t) for t in pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy().reshape(-1)]
                arrays = encode(self.tokenizer, texts, **self.settings)
                outputs = [pb_utils.Tensor(n, a.astype(self.dtypes[n], copy=False)) for n, a in arrays.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as e:  # answer this request with the error; the batch goes on
                error = pb_utils.TritonError(f"poolx tokenizer: {type(e).__name__}: {e}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
