"""Every mainstream encoder family and decoder embedding models export faithfully (issue 12).

Tiny random backbones of each family, built offline from configs (hidden 32, 2 layers, 4 heads), are exported plain
and with --optimize and verified against eager PyTorch, each fused graph holding exactly the ops its backbone
adapter declares. Decoders get realistic tokenizers, byte-level BPE trained here: Llama/Mistral style (adds <s>,
has no pad token) and Qwen style (adds no special tokens at all, so "" is no tokens). The families poolx cannot
export faithfully, and remote-code models, are refused before anything is loaded or written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_tokenizer
from poolx.cli import app
from poolx.exporter.export import export
from poolx.models.backbones import GENERIC, adapter_for
from poolx.parity.texts import VERIFY_TEXTS
from poolx.parity.verify import verify

LAYERS = 2
TINY = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=37)
MAX_LENGTH = 32  # 2-token texts to truncated ones, at a fraction of the default cost
# verify's texts here: the empty text, one token, short and multilingual ones, and one far beyond MAX_LENGTH
TEXTS = (*VERIFY_TEXTS[:4], VERIFY_TEXTS[9], VERIFY_TEXTS[10], VERIFY_TEXTS[18])

# model_type -> config beyond TINY (vocabulary: conftest.tiny_tokenizer's, pad id 0). The families' own
# defaults are kept where they matter: DeBERTa-v3's relative attention, ModernBERT's alternating sliding-window
# layers (a 16-token window, narrower than MAX_LENGTH), BigBird with full attention.
ENCODERS: dict[str, dict] = {
    "bert": {},
    "roberta": dict(max_position_embeddings=514, pad_token_id=0, type_vocab_size=1),
    "xlm-roberta": dict(max_position_embeddings=514, pad_token_id=0, type_vocab_size=1),
    "distilbert": dict(dim=32, n_layers=LAYERS, n_heads=4, hidden_dim=37),
    "albert": dict(embedding_size=16),
    "electra": dict(embedding_size=16),
    "mpnet": dict(max_position_embeddings=514, pad_token_id=0),
    "deberta-v2": dict(  # DeBERTa-v3's config
        relative_attention=True, position_buckets=32, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
    ),
    "modernbert": dict(
        pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
        global_attn_every_n_layers=2, local_attention=16, max_position_embeddings=512,
    ),
    "nomic_bert": dict(pad_token_id=0, max_position_embeddings=512),
    "gte": dict(pad_token_id=0, max_position_embeddings=512, type_vocab_size=2),
    "roformer": dict(embedding_size=32, max_position_embeddings=512),
    "eurobert": dict(
        pad_token_id=0, bos_token_id=101, eos_token_id=102, mask_token_id=103, num_key_value_heads=4,
        max_position_embeddings=512,
    ),
    "big_bird": dict(attention_type="original_full", max_position_embeddings=512),
}
FAMILY = {"xlm-roberta": "roberta", "deberta-v2": "deberta", "big_bird": "bigbird", "albert": "generic"}
WITH_TOKEN_TYPES = {"bert", "albert", "electra", "nomic_bert", "gte", "roformer", "big_bird"}  # type_vocab_size 2

# model_type -> (tokenizer style, config beyond TINY); 2 key/value heads: grouped-query attention
DECODERS: dict[str, tuple[str, dict]] = {
    "qwen2": ("qwen", {}),
    "qwen3": ("qwen", dict(head_dim=8)),
    "llama": ("llama", {}),
    "mistral": ("llama", dict(sliding_window=None)),
    "gemma": ("llama", dict(head_dim=8)),
}
FIRST_TOKEN_POOLERS = [  # CLI arguments of every pooler that reads the first token
    ["--pooling", "cls"], ["--pooling", "weighted", "--layer-start", "1", "--token", "cls"],
    ["--pooling", "layer-cls", "--layer", "-1"], ["--pooling", "concat", "--layers", "-1,-2"],
    ["--pooling", "lstm"], ["--pooling", "attention"], ["--pooling", "pooler"],
    ["--pooling", "st", "--modes", "cls,mean"],
]

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Eager PyTorch and onnxruntime on one thread, without spin-waiting, for this module (what conftest does for
    xdist workers, here for a plain run too): on these tiny models two threads' start-up and spinning cost more than
    their matrices (2.5x on this file's 2-core machine). Restored after the module."""
    import torch

    import poolx.runtime.embedder as embedder_module
    import poolx.runtime.session as session_module

    threads, create = torch.get_num_threads(), session_module.create_session

    def one_thread_session(graph, provider="cpu", threads=None, provider_options=None, spinning=True, throughput=None):
        return create(graph, provider, threads or 1, provider_options, False, throughput)

    torch.set_num_threads(1)
    session_module.create_session = embedder_module.create_session = one_thread_session
    yield
    torch.set_num_threads(threads)
    session_module.create_session = embedder_module.create_session = create


def one_line_error(result, *needles: str) -> str:
    """The CLI's refusal: exit 2, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def save_tiny(model_type: str, directory: Path, tokenizer, **config) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(1234)
    AutoModel.from_config(AutoConfig.for_model(model_type, **config)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory




def bpe_tokenizer(style: str):
    """A byte-level BPE tokenizer trained on the verify texts (512 tokens), as decoders ship them. "qwen": adds
    no special tokens, pads with <|endoftext|> (Qwen2, Qwen3); "llama": adds <s> before each text, has <unk> and
    </s>, and no pad token (Llama, Mistral base models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if style == "qwen" else ["<unk>", "<s>", "</s>"]
    tok.train_from_iterator(list(VERIFY_TEXTS), trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    if style == "qwen":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=128,
        )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=128,
    )


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """model_type -> its tiny model directory, built once per module on first use."""
    root = tmp_path_factory.mktemp("families")
    built: dict[str, Path] = {}

    def get(model_type: str) -> Path:
        if model_type not in built:
            if model_type in DECODERS:
                style, extra = DECODERS[model_type]
                tokenizer = bpe_tokenizer(style)
                built[model_type] = save_tiny(  # no pad_token_id, as decoder configs ship: no embedding row is zero
                    model_type, root / model_type, tokenizer, **TINY, **extra, vocab_size=len(tokenizer),
                    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=None,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                )
            else:
                tokenizer = tiny_tokenizer()
                config = dict(TINY, vocab_size=len(tokenizer), **ENCODERS[model_type])
                if model_type == "distilbert":
                    config = dict(ENCODERS[model_type], vocab_size=len(tokenizer))
                built[model_type] = save_tiny(model_type, root / model_type, tokenizer, **config)
        return built[model_type]

    return get


@pytest.fixture(scope="module")
def exported(build, tmp_path_factory):
    """(model_type, pooling, optimize) -> its export (max_length MAX_LENGTH), made once per module on first use;
    read only."""
    root = tmp_path_factory.mktemp("exports")
    made: dict[tuple, Path] = {}

    def get(model_type: str, pooling: str, optimize: bool) -> Path:
        key = (model_type, pooling, optimize)
        if key not in made:
            out = root / "-".join(map(str, key))
            export(str(build(model_type)), out, pooling=pooling, optimize=optimize, max_length=MAX_LENGTH)
            made[key] = out
        return made[key]

    return get


# ---- encoders ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_encoder_family_exports_and_verifies(model_type, optimize, build, tmp_path):
    from transformers import AutoConfig

    result = export(str(build(model_type)), tmp_path / "e", pooling="mean", optimize=optimize, max_length=MAX_LENGTH)
    config = AutoConfig.from_pretrained(build(model_type))
    adapter = adapter_for(config)
    assert adapter.family == FAMILY.get(model_type, model_type) and not adapter.is_causal(config)
    token_types = ["token_type_ids"] if model_type in WITH_TOKEN_TYPES else []
    assert result.manifest.io.input_names == ["input_ids", "attention_mask", *token_types]
    fusions = result.manifest.graph["fusions"]
    if not optimize:
        assert fusions is None
    elif adapter is GENERIC:  # ALBERT: nothing pinned, but its shared layers fuse too
        assert fusions and fusions.get("SkipLayerNormalization", 0) >= 2 * LAYERS
    else:
        assert fusions == adapter.expected_fusions(LAYERS, config)
    report = verify(tmp_path / "e", texts=TEXTS)
    assert report.passed, report.summary()
    (embedding,) = report.outputs
    assert embedding.atol == 1e-4 and embedding.max_abs < 1e-5  # held to the fp32 bound, and well inside it


# ---- decoders ------------------------------------------------------------------------------------------------
# Each family with both poolers and both variants, the four combinations spread over the families.
DECODER_CASES = [
    (model_type, pooling, optimize)
    for i, model_type in enumerate(DECODERS)
    for pooling, optimize in ((("last", i % 2 == 0), ("mean", i % 2 == 1)))
]


def eager_vectors(directory: Path, pooling: str, texts) -> np.ndarray:
    """Each text alone (no padding) through transformers' tokenizer and the eager PooledEncoder; a text of no
    tokens made the pad token, attended, as the runtime does."""
    import torch
    from transformers import AutoTokenizer

    from poolx.models.encoder import PooledEncoder
    from poolx.runtime.tokenizer import attend_empty_rows

    tokenizer = AutoTokenizer.from_pretrained(directory)
    encoder = PooledEncoder.from_pretrained(str(directory), pooling).eval()
    rows = []
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=MAX_LENGTH, return_tensors="np")
        feeds = attend_empty_rows({k: enc[k] for k in ("input_ids", "attention_mask")}, tokenizer.pad_token_id)
        with torch.no_grad():
            out = encoder(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        rows.append(out["sentence_embedding"][0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("model_type,pooling,optimize", DECODER_CASES)
def test_decoder_exports_verifies_and_embeds_like_eager(model_type, pooling, optimize, build, exported):
    from poolx.manifest import Manifest
    from poolx.runtime.embedder import Embedder

    directory, out = build(model_type), exported(model_type, pooling, optimize)
    manifest = Manifest.read(out)
    adapter = adapter_for(model_type)
    assert adapter.family == model_type and adapter.padding_side == "right"
    assert manifest.io.input_names == ["input_ids", "attention_mask"]
    assert manifest.tokenizer["padding_side"] == "right"
    assert manifest.graph["fusions"] == (adapter.expected_fusions(LAYERS) if optimize else None)
    # TEXTS[0] is "", which a Qwen tokenizer turns into no tokens: the tokenizer check holds transformers' ids to
    # the runtime's rule, and the comparisons run it as one attended pad token
    report = verify(out, texts=TEXTS)
    assert report.passed, report.summary()
    assert report.outputs[0].max_abs < 1e-5
    # the runtime (sorted, batched, padded right) gives every text the vector eager PyTorch gives it alone
    embedder = Embedder(out, provider="cpu")
    with pytest.warns(UserWarning, match="truncated"):
        got = embedder.embed(list(TEXTS), batch_size=4)
    want = eager_vectors(directory, pooling, TEXTS)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_last_pooling_is_padding_invariant(exported):
    """A text's `last` vector alone and padded in a batch (to its longest text, and to max_length) is the same:
    right padding leaves its positions alone, and nothing real attends to the pad tokens."""
    from poolx.runtime.embedder import Embedder

    embedder = Embedder(exported("qwen3", "last", False), provider="cpu")
    encoder = embedder.text_encoder
    short, long_ = VERIFY_TEXTS[2], VERIFY_TEXTS[18]

    def run(texts, pad_to=None):
        return embedder.session.run(["sentence_embedding"], encoder(texts, pad_to=pad_to))[0]

    alone = run([short])[0]
    beside = run([short, long_])
    assert alone.shape == (32,) and beside.shape == (2, 32) and encoder([short, long_])["attention_mask"][0, -1] == 0
    np.testing.assert_allclose(beside[0], alone, atol=1e-5)
    np.testing.assert_allclose(run([long_, short], pad_to=MAX_LENGTH)[1], alone, atol=1e-5)
    assert not np.allclose(beside[1], alone, atol=1e-3)  # the long text has a vector of its own


# ---- tokenizers ----------------------------------------------------------------------------------------------
def test_tokenizer_without_pad_token_pads_with_eos(build, tmp_path):
    """Llama/Mistral tokenizers have no pad token: the export picks the eos token, saves it with the tokenizer
    and records it in the manifest, through the CLI (exit 0, not an internal error)."""
    from transformers import AutoTokenizer

    directory = build("llama")
    assert AutoTokenizer.from_pretrained(directory).pad_token is None
    result = runner.invoke(app, ["export", str(directory), "-o", str(tmp_path / "e"), "--pooling", "last",
                                 "--max-length", str(MAX_LENGTH)])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "e" / "manifest.json").read_text())
    saved = AutoTokenizer.from_pretrained(tmp_path / "e")
    assert manifest["tokenizer"]["pad_token"] == saved.pad_token == "</s>"
    assert manifest["tokenizer"]["pad_token_id"] == saved.pad_token_id == saved.eos_token_id


def test_pad_token_fallbacks():
    """eos, else unk, else bos, else the vocabulary's token 0; a tokenizer with a pad token keeps it."""
    from poolx.models.loading import ensure_pad_token

    assert ensure_pad_token(tiny_tokenizer()) is None  # [PAD] stays
    for kept, want in ((("bos_token", "unk_token", "eos_token"), "</s>"), (("bos_token", "unk_token"), "<unk>"),
                       (("bos_token",), "<s>"), ((), None)):
        tok = bpe_tokenizer("llama")
        for name in ("bos_token", "unk_token", "eos_token"):
            if name not in kept:
                setattr(tok, name, None)
        chosen = ensure_pad_token(tok)
        assert chosen == (want or tok.convert_ids_to_tokens(0)) == tok.pad_token
        assert tok.pad_token_id == tok.convert_tokens_to_ids(chosen)
        assert tok(["a", "longer text"], padding=True)["input_ids"][0][-1] == tok.pad_token_id


def test_empty_text_is_one_attended_token_everywhere(build, exported):
    """A tokenizer that adds no special tokens turns "" into no tokens: the runtime makes it the pad token,
    attended, so `embed([""])` is a real vector (eager PyTorch's for that token), alone or beside other texts."""
    from transformers import AutoTokenizer

    from poolx.runtime.embedder import Embedder
    from poolx.runtime.tokenizer import attend_empty_rows

    directory = build("qwen2")
    assert AutoTokenizer.from_pretrained(directory)("")["input_ids"] == []
    embedder = Embedder(exported("qwen2", "mean", False), provider="cpu")
    pad = embedder.manifest.tokenizer["pad_token_id"]
    feeds = embedder.text_encoder([""])
    assert feeds["input_ids"].tolist() == [[pad]] and feeds["attention_mask"].tolist() == [[1]]
    assert embedder.text_encoder.lengths(["", "a"])[0] == 1
    padded = embedder.text_encoder(["", VERIFY_TEXTS[3]])
    assert padded["attention_mask"][0].tolist() == [1] + [0] * (padded["attention_mask"].shape[1] - 1)
    alone = embedder.embed([""])
    assert alone.shape == (1, 32) and np.isfinite(alone).all() and np.abs(alone).sum() > 0
    np.testing.assert_allclose(embedder.embed(["", VERIFY_TEXTS[3], ""])[[0, 2]], np.repeat(alone, 2, 0), atol=1e-5)
    np.testing.assert_allclose(alone, eager_vectors(directory, "mean", [""]), atol=1e-5)
    # the rule on transformers' own (0-column) output is the runtime's arrays
    empty = {"input_ids": np.zeros((2, 0), np.int64), "attention_mask": np.zeros((2, 0), np.int64)}
    assert {k: v.tolist() for k, v in attend_empty_rows(empty, pad).items()} == {
        "input_ids": [[pad], [pad]], "attention_mask": [[1], [1]],
    }


# ---- refusals ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", FIRST_TOKEN_POOLERS, ids=lambda a: " ".join(a[1:]))
def test_first_token_poolers_are_refused_on_a_decoder(args, build, tmp_path):
    """On a causal backbone the first token has seen only itself: every text would get the same vector."""
    result = runner.invoke(app, ["export", str(build("qwen3")), "-o", str(tmp_path / "e"), *args])
    line = one_line_error(result)
    assert ("causal backbone" in line and "'last'" in line) or "no pooler head" in line, line
    assert not (tmp_path / "e").exists()


def test_decoder_families_are_causal_and_encoders_are_not():
    from transformers import AutoConfig

    from poolx.models.backbones import DECODERS as DECODER_ADAPTERS

    assert {t for a in DECODER_ADAPTERS for t in a.model_types} == set(DECODERS)
    for model_type in DECODERS:
        assert adapter_for(model_type).is_causal(AutoConfig.for_model(model_type))
    for model_type in ENCODERS:
        assert not adapter_for(model_type).is_causal(AutoConfig.for_model(model_type))


def tiny_refused(model_type: str, directory: Path, **config) -> Path:
    tokenizer = tiny_tokenizer()
    return save_tiny(model_type, directory, tokenizer, vocab_size=len(tokenizer), **TINY, **config)


def with_auto_map(directory: Path, **changes) -> Path:
    """The model directory's config.json naming its own code, as remote-code checkpoints do."""
    config = json.loads((directory / "config.json").read_text())
    config.update(auto_map={"AutoConfig": "configuration.CustomConfig", "AutoModel": "modeling.CustomModel"}, **changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("case", ["longformer", "bigbird-block-sparse", "remote-code", "remote-code-built-in-type"])
def test_refused_up_front_with_one_line_and_nothing_written(case, tmp_path):
    directory = tmp_path / "model"
    if case == "longformer":
        tiny_refused("longformer", directory, attention_window=[8, 8], max_position_embeddings=514, pad_token_id=0)
        needles = ("Longformer is not exported", "shape")
    elif case == "bigbird-block-sparse":
        tiny_refused("big_bird", directory, attention_type="block_sparse", block_size=4, num_random_blocks=2)
        needles = ("block_sparse", "original_full")
    elif case == "remote-code":  # gte-v1.5 style: a model type of its own, only in the repository's code
        with_auto_map(tiny_refused("bert", directory), model_type="new", architectures=["NewModel"])
        needles = ("auto_map: AutoConfig, AutoModel", "does not run code", "no built-in 'new' model")
    else:  # jina-bert / gte-Qwen2 style: a built-in model type, but the repository's own code for it
        with_auto_map(tiny_refused("bert", directory))
        needles = ("auto_map", "does not run code", "remove auto_map")
    # were transformers to prompt "run the custom code? [y/N]", it would read this y
    result = runner.invoke(app, ["export", str(directory), "-o", str(tmp_path / "e")], input="y\n")
    one_line_error(result, *needles)
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".*"))  # no staging directory left either


def test_removing_auto_map_chooses_the_built_in_implementation(tmp_path):
    """nomic-embed checkpoints name their own code but transformers implements nomic_bert: refused as they come,
    loaded with transformers' own class once the user removes auto_map (never the repository's code)."""
    from poolx.errors import ModelLoadError
    from poolx.models.loading import check_supported, load_backbone, resolve_source

    directory = with_auto_map(tiny_refused("nomic_bert", tmp_path / "m", max_position_embeddings=512))
    source = resolve_source(str(directory))
    with pytest.raises(ModelLoadError, match="remove auto_map"):
        load_backbone(source)
    config = json.loads((directory / "config.json").read_text())
    del config["auto_map"]
    (directory / "config.json").write_text(json.dumps(config))
    assert check_supported(source).model_type == "nomic_bert"
    assert type(load_backbone(source)).__module__.startswith("transformers.models.nomic_bert")


# ---- fusion of RMSNorm backbones --------------------------------------------------------------------------------
def test_onnxruntime_schemas_keep_the_checker_real():
    """SimplifiedLayerNormalization (what every RMSNorm fuses to) lives in the ONNX domain but only onnxruntime
    defines it: once fuse registers onnxruntime's schema, onnx's full check passes a well-formed node and still
    rejects a malformed one and an op neither library defines."""
    import onnx
    from onnx import TensorProto, helper

    from poolx.exporter.fuse import register_onnxruntime_schemas

    def graph(node):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [4], [1.0] * 4)
        return helper.make_model(helper.make_graph([node], "g", [x], [y], [scale]),
                                 opset_imports=[helper.make_opsetid("", 17)])

    good = graph(helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], axis=-1, epsilon=1e-6))
    register_onnxruntime_schemas(good)
    onnx.checker.check_model(good, full_check=True)
    assert onnx.defs.get_schema("SimplifiedLayerNormalization", 17, "").since_version == 1
    bad_inputs = graph(helper.make_node("SimplifiedLayerNormalization", ["x"], ["y"], epsilon=1e-6))
    bad_attribute = graph(helper.make_node("SimplifiedLayerNormalization", ["x", "scale"], ["y"], epsilon="tiny"))
    unknown = graph(helper.make_node("RootMeanSquareNorm", ["x", "scale"], ["y"]))
    assert register_onnxruntime_schemas(unknown) == []
    for model in (bad_inputs, bad_attribute, unknown):
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(model, full_check=True)


def test_optimize_below_opset_17_keeps_its_layernorm_checked(build, tmp_path):
    """Below opset 17 onnx has no LayerNormalization, but the optimizer leaves RoBERTa's embedding norm one in the
    ONNX domain (onnxruntime's own, since opset 1): the export registers that schema, passes the checker and the
    exporter's parity gate."""
    import onnx

    result = export(str(build("roberta")), tmp_path / "e", pooling="mean", optimize=True, opset=14,
                    max_length=MAX_LENGTH)
    assert result.manifest.graph["fusions"]["LayerNormalization"] == 1
    nodes = onnx.load(str(tmp_path / "e" / "model.onnx")).graph.node
    assert any(n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx") for n in nodes)
    assert onnx.defs.get_schema("LayerNormalization", 14, "").since_version == 1
