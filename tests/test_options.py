"""Pooler options declared once (poolx.models.options, the registry): validation messages, the `poolx export`
flags generated from the declarations and their round trip, the registry's checks, and a pooler registered at
runtime by a third party."""

from __future__ import annotations

import pytest

from poolx.errors import UnknownPoolerError, UsageError
from poolx.models.options import INT_LIST, STR_LIST, L, LayerBound, Option, validate_options
from poolx.models.registry import cli_flags, parse_cli_options
from poolx.models.registry import PoolerSpec, add_spec, create_pooler, get_spec, list_poolers, pooler_specs

LAYER = Option("layer", int, -2, "hidden_states index", min=-(L + 1), max=L)
START = Option("layer_start", int, 4, "first index", min=0, max=L)
SIZE = Option("size", int, 8, "a size", min=1)
P = Option("p", float, 0.1, "a probability", min=0.0, max=1.0, max_exclusive=True)
TOKEN = Option("token", str, "cls", "which token", choices=("cls", "mean"))
LAYERS = Option("layers", INT_LIST, (-1, -2), "indices", min=-(L + 1), max=L)


@pytest.mark.parametrize(
    "option,value,num_layers,message",
    [
        (SIZE, 0, None, "size must be a positive integer, got 0"),
        (SIZE, "3", None, "size must be an integer, got '3'"),
        (SIZE, True, None, "size must be an integer, got True"),
        (SIZE, 2.5, None, "size must be an integer, got 2.5"),
        (LAYER, 5, 4, "layer 5 is out of range: this backbone has 5 hidden states (embeddings + 4 layers); use 0..4 or -5..-1"),
        (LAYER, -6, 4, "layer -6 is out of range"),
        (START, -1, 4, "layer_start -1 is out of range: this backbone has 5 hidden states (embeddings + 4 layers); use 0..4"),
        (START, -1, None, "layer_start must be an integer in 0..L, got -1"),
        (P, 1.0, None, "p must be a number in [0, 1), got 1.0"),
        (P, -0.5, None, "p must be a number in [0, 1), got -0.5"),
        (P, "0.1", None, "p must be a number in [0, 1), got '0.1'"),
        (P, float("nan"), None, "p must be a number in [0, 1), got nan"),
        (TOKEN, "max", None, "token must be one of 'cls', 'mean', got 'max'"),
        (TOKEN, 1, None, "token must be one of 'cls', 'mean', got 1"),
        (LAYERS, [], 4, "layers must be a non-empty list of integers in 0..L or -(L+1)..-1, got []"),
        (LAYERS, "1,2", 4, "layers must be a non-empty list"),
        (LAYERS, [0, 9], 4, "layers entry 9 is out of range"),
        (LAYERS, [0, "x"], 4, "layers entry must be an integer, got 'x'"),
    ],
)
def test_validation_messages_name_the_option_and_its_valid_values(option, value, num_layers, message):
    with pytest.raises(UsageError) as err:
        option.validate(value, num_layers)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_valid_values_come_back_typed():
    assert P.validate(0) == 0.0 and isinstance(P.validate(0), float)
    assert LAYER.validate(-5, 4) == -5 and LAYER.validate(4, 4) == 4
    assert LAYER.validate(99) == 99  # bounds with L wait for a backbone
    assert LAYERS.validate((0, -1), 4) == [0, -1]
    assert SIZE.validate(4.0) == 4  # JSON written by other tools
    assert TOKEN.validate("mean") == "mean"


def test_unknown_options_are_refused_naming_what_the_pooler_takes():
    with pytest.raises(UsageError, match=r"pooler 'x' does not take --layer, --windw; it takes: --size, --p"):
        validate_options("x", (SIZE, P), {"windw": 1, "layer": 2})
    with pytest.raises(UsageError, match="it takes: no options"):
        validate_options("x", (), {"size": 1})
    assert validate_options("x", (SIZE, LAYERS), {"size": None}) == {"size": 8, "layers": [-1, -2]}


def test_declarations_describe_themselves():
    assert SIZE.flag == "--size" and START.flag == "--layer-start"
    assert LAYER.range_text() == "0..L or -(L+1)..-1" and LAYER.range_text(4) == "0..4 or -5..-1"
    assert START.range_text() == "0..L" and START.range_text(6) == "0..6"
    assert P.range_text() == "[0, 1)" and TOKEN.range_text() == "cls|mean" and SIZE.range_text() == ">= 1"
    assert START.describe() == "first index (0..L, default 4)"
    assert LAYERS.describe() == "indices (0..L or -(L+1)..-1, default -1,-2)"
    assert str(-(L + 1)) == "-(L+1)" and str(L - 1) == "L-1" and (L + 2).resolve(10) == 12


def test_cli_parsing():
    assert LAYERS.parse("-1, -2,0") == [-1, -2, 0] and LAYERS.parse(None) is None
    with pytest.raises(UsageError, match="--layers must be comma-separated integers with none left empty, got '-1,x'"):
        LAYERS.parse("-1,x")
    with pytest.raises(UsageError, match="--layers must list at least one integer"):
        LAYERS.parse(",")
    assert SIZE.parse("3") == 3 and P.parse("0.5") == 0.5


def test_bad_declarations_fail_at_import():
    with pytest.raises(ValueError, match="type must be"):
        Option("x", list, [], "x")
    with pytest.raises(UsageError, match="x must be a positive integer, got 0"):
        Option("x", int, 0, "x", min=1)  # a default its own declaration refuses
    with pytest.raises(ValueError, match="identifier"):
        Option("x-y", int, 1, "x")
    with pytest.raises(ValueError, match="width must be"):
        PoolerSpec("p", "m:C", (SIZE,), width="3·D")
    with pytest.raises(ValueError, match="reads must be"):
        PoolerSpec("p", "m:C", reads="attentions")


def test_one_option_name_has_one_type_across_poolers():
    with pytest.raises(ValueError, match="option 'hidden_size' is float but pooler 'lstm' declares it int"):
        add_spec(PoolerSpec("bad", "m:C", (Option("hidden_size", float, 1.0, "x"),)))
    with pytest.raises(ValueError, match="already registered"):
        add_spec(PoolerSpec("mean", "m:C"))
    assert "bad" not in list_poolers()


def test_cli_flags_one_per_option_name_with_merged_help():
    flags = {f.param: f for f in cli_flags()}
    declared = {o.name for s in pooler_specs() for o in s.options}
    assert set(flags) == declared
    hidden = flags["hidden_size"]
    assert hidden.flag == "--hidden-size" and hidden.type is int
    assert hidden.help == ("lstm: LSTM hidden size = output width (>= 1, default 256); "
                           "attention: projection size = output width (>= 1, default 128).")
    assert flags["dropout"].help.startswith("lstm, attention: ")  # identical declarations are listed once
    assert flags["layers"].type is str and flags["dropout"].type is float
    assert parse_cli_options({"layers": "-1,0", "dropout": None}) == {"layers": [-1, 0]}


def _other_value(option: Option):
    """A valid value that is not the default, for a 12-layer backbone."""
    if option.type == STR_LIST:
        return [c for c in option.choices if c not in option.default][:2]
    if option.choices is not None:
        return next(c for c in option.choices if c != option.default)
    if option.type == INT_LIST:
        return [0, -1, 3]
    if option.type is float:
        return 0.25
    top = option.max.resolve(12) if isinstance(option.max, LayerBound) else option.max
    return option.default + 1 if top is None or option.default + 1 <= top else option.default - 1


def _cli_text(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def test_every_declared_option_is_an_export_flag_and_round_trips():
    """flag text -> Typer's parsing of `poolx export` -> the pooler's validation -> config(): for every option of
    every registered pooler (replaces the meta-test that kept hand-written flags in step)."""
    import typer.main

    from poolx.cli import app

    command = typer.main.get_command(app).commands["export"]
    params = {name: p for p in command.params for name in p.opts}
    for spec in pooler_specs():
        for option in spec.options:
            assert option.flag in params, (spec.name, option.flag)
            value = _other_value(option)
            ctx = command.make_context("export", ["-p", spec.name, option.flag, _cli_text(value)])
            given = {k: v for k, v in ctx.params.items() if k in {f.param for f in cli_flags()}}
            options = parse_cli_options(given)
            assert options == {option.name: value}, (spec.name, option.name)
            pooler = create_pooler(spec.name, width=8, num_layers=12, **options)
            config = pooler.config()
            assert config == {**spec.defaults(), option.name: value}, (spec.name, config)
            assert getattr(pooler, option.name) == value


# ---- a pooler registered at runtime --------------------------------------------------------------------------
@pytest.fixture
def third_party():
    import torch
    from torch import nn

    from poolx.models import Pooler, register_pooler
    from poolx.models.masking import masked_mean
    from poolx.models.registry import unregister_pooler

    @register_pooler(
        "proj-mean", options=(Option("size", int, 8, "projection size = output width", min=1),), width="size",
    )
    class ProjectedMean(Pooler):
        """A learned projection of the masked mean."""

        def build(self) -> None:
            self.proj = nn.Linear(self.width, self.size)

        def forward(self, features):
            return torch.tanh(self.proj(masked_mean(features.last_hidden_state, features.attention_mask)))

    yield ProjectedMean
    unregister_pooler("proj-mean")
    assert "proj-mean" not in list_poolers()


def test_third_party_pooler_is_listed_created_described_and_exported(third_party, tiny_models, tmp_path):
    from poolx.exporter.export import export
    from poolx.models import describe_poolers
    from poolx.parity.texts import VERIFY_TEXTS
    from poolx.parity.verify import verify

    assert list_poolers()[-1] == "proj-mean" and get_spec("proj-mean").poolx_only
    pooler = create_pooler("proj-mean", width=16, num_layers=4, size=3)
    assert isinstance(pooler, third_party) and pooler.output_dim == 3 and pooler.config() == {"size": 3}
    with pytest.raises(UsageError, match="size must be a positive integer"):
        create_pooler("proj-mean", width=16, num_layers=4, size=0)
    (described,) = [d for d in describe_poolers() if d.name == "proj-mean"]
    assert described.width == "--size (default 8)" and described.learned == "yes"
    assert described.summary == "A learned projection of the masked mean."

    result = export(str(tiny_models["bert"]), tmp_path / "e", pooling="proj-mean", size=5, max_length=64)
    assert result.manifest.pooling["options"] == {"size": 5} and result.manifest.pooling["output_dim"] == 5
    assert result.untrained and (tmp_path / "e" / "pooler.safetensors").is_file()
    assert verify(tmp_path / "e", texts=VERIFY_TEXTS[:8]).passed


def test_register_pooler_refuses_untyped_or_duplicate_declarations():
    from poolx.models import Pooler, register_pooler
    from poolx.models.poolers.tokens import MeanPooler

    with pytest.raises(TypeError, match="options must be a sequence of poolx.models.options.Option"):
        register_pooler("dict-options", options={"size": "help"})(type("Old", (Pooler,), {}))
    with pytest.raises(ValueError, match="already registered"):
        register_pooler("mean-again")(MeanPooler)
    assert "dict-options" not in list_poolers() and "mean-again" not in list_poolers()
    with pytest.raises(UnknownPoolerError, match="unknown pooler 'nope'"):
        get_spec("nope")
