"""The Kaggle notebook "Utilizing Transformer Representations Efficiently", as quoted in
/work/shared/seeds/001_7b8203d04b666e3a.txt, with its Python indentation restored.

It is kept as close to the digest as possible, bugs included: the tests in test_notebook_parity.py compare poolx
with this code where the notebook is right and show that poolx differs where it is wrong. The only changes:

- each `with torch.no_grad(): outputs = model(features['input_ids'], features['attention_mask']) ...` block
  became a function that takes `outputs` (what the model returned: `outputs[0]` last_hidden_state, `outputs[1]`
  pooler_output, `outputs[2]` the tuple of hidden states) and, where the block reads it, `attention_mask`
  instead of the global `features['attention_mask']`; the block returns its pooled embeddings;
- the `logits = nn.Linear(...)(...)` head at the end of each block is left out (a fresh random head; poolx's
  pooler stops before the head), except in conv1d where `logits` *is* the pooled output;
- conv1d's hard-coded 768 (roberta-base's hidden size) is the `hidden_size` argument, and its two convolutions,
  which the notebook builds inline, are passed in (`make_conv1d_layers` builds them exactly as the notebook does)
  so the tests can give them poolx's weights;
- layer-cls's `layer_index = 11` and weighted's `layer_start = 9` / `hiddendim_*` are keyword arguments with the
  notebook's values as defaults, and the model-config values (`config.num_hidden_layers`, `config.hidden_size`)
  are arguments;
- WKPooling is not reproduced (not part of this comparison).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---- pooler output ------------------------------------------------------------------------------------------
def pooler_output(outputs):
    with torch.no_grad():
        pooler_output = outputs[1]
        # logits = nn.Linear(config.hidden_size, 1)(pooler_output)
    return pooler_output


# ---- Last Hidden State Output (CLS) -------------------------------------------------------------------------
def cls_pooling(outputs):
    with torch.no_grad():
        last_hidden_state = outputs[0]
        cls_embeddings = last_hidden_state[:, 0]
        # logits = nn.Linear(config.hidden_size, 1)(cls_embeddings)
    return cls_embeddings


# ---- Mean Pooling -------------------------------------------------------------------------------------------
def mean_pooling(outputs, attention_mask):
    with torch.no_grad():
        last_hidden_state = outputs[0]
        input_mask_expanded = attention_mask.unsqueeze(-1).expand(last_hidden_state.size()).float()
        sum_embeddings = torch.sum(last_hidden_state * input_mask_expanded, 1)
        sum_mask = input_mask_expanded.sum(1)
        sum_mask = torch.clamp(sum_mask, min=1e-9)
        mean_embeddings = sum_embeddings / sum_mask
        # logits = nn.Linear(config.hidden_size, 1)(mean_embeddings)
    return mean_embeddings


# ---- Max Pooling (writes into outputs[0] in place) ----------------------------------------------------------
def max_pooling(outputs, attention_mask):
    with torch.no_grad():
        last_hidden_state = outputs[0]
        input_mask_expanded = attention_mask.unsqueeze(-1).expand(last_hidden_state.size()).float()
        last_hidden_state[input_mask_expanded == 0] = -1e9  # Set padding tokens to large negative value
        max_embeddings = torch.max(last_hidden_state, 1)[0]
        # logits = nn.Linear(config.hidden_size, 1)(max_embeddings)
    return max_embeddings


# ---- Mean-Max Pooling (no mask; the "max" half is the argmax indices) ---------------------------------------
def mean_max_pooling(outputs):
    with torch.no_grad():
        last_hidden_state = outputs[0]
        mean_pooling_embeddings = torch.mean(last_hidden_state, 1)
        _, max_pooling_embeddings = torch.max(last_hidden_state, 1)
        mean_max_embeddings = torch.cat((mean_pooling_embeddings, max_pooling_embeddings), 1)
        # logits = nn.Linear(config.hidden_size*2, 1)(mean_max_embeddings)
    return mean_max_embeddings


# ---- Conv 1D Pooling (no mask) ------------------------------------------------------------------------------
def make_conv1d_layers(hidden_size=768):
    cnn1 = nn.Conv1d(hidden_size, 256, kernel_size=2, padding=1)
    cnn2 = nn.Conv1d(256, 1, kernel_size=2, padding=1)
    return cnn1, cnn2


def conv1d_pooling(outputs, cnn1, cnn2):
    with torch.no_grad():
        last_hidden_state = outputs[0]
        last_hidden_state = last_hidden_state.permute(0, 2, 1)
        cnn_embeddings = F.relu(cnn1(last_hidden_state))
        cnn_embeddings = cnn2(cnn_embeddings)
        logits, _ = torch.max(cnn_embeddings, 2)
    return logits


# ---- Hidden States Output (one layer's CLS) -----------------------------------------------------------------
def hidden_states_cls(outputs, layer_index=11):
    with torch.no_grad():
        all_hidden_states = torch.stack(outputs[2])
        # layer_index = 11 # second to last hidden layer
        cls_embeddings = all_hidden_states[layer_index+1, :, 0]  # layer_index+1 as we have 13 layers (embedding + num of blocks)
        # logits = nn.Linear(config.hidden_size, 1)(cls_embeddings)
    return cls_embeddings


# ---- Concatenate Pooling ------------------------------------------------------------------------------------
def concatenate_pooling(outputs):
    with torch.no_grad():
        all_hidden_states = torch.stack(outputs[2])
        concatenate_pooling = torch.cat(
            (all_hidden_states[-1], all_hidden_states[-2], all_hidden_states[-3], all_hidden_states[-4]),-1
        )
        concatenate_pooling = concatenate_pooling[:, 0]
        # logits = nn.Linear(config.hidden_size*4, 1)(concatenate_pooling)
    return concatenate_pooling


# ---- Weighted Layer Pooling ---------------------------------------------------------------------------------
class WeightedLayerPooling(nn.Module):
    def __init__(self, num_hidden_layers, layer_start: int = 4, layer_weights = None):
        super(WeightedLayerPooling, self).__init__()
        self.layer_start = layer_start
        self.num_hidden_layers = num_hidden_layers
        self.layer_weights = layer_weights if layer_weights is not None \
            else nn.Parameter(
                torch.tensor([1] * (num_hidden_layers+1 - layer_start), dtype=torch.float)
            )

    def forward(self, all_hidden_states):
        all_layer_embedding = all_hidden_states[self.layer_start:, :, :, :]
        weight_factor = self.layer_weights.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1).expand(all_layer_embedding.size())
        weighted_average = (weight_factor*all_layer_embedding).sum(dim=0) / self.layer_weights.sum()
        return weighted_average


def weighted_layer_pooling(outputs, pooler):
    """The notebook's usage block; `pooler` is `WeightedLayerPooling(config.num_hidden_layers,
    layer_start=layer_start, layer_weights=None)`, built by the caller so its weights can be set."""
    with torch.no_grad():
        all_hidden_states = torch.stack(outputs[2])
        weighted_pooling_embeddings = pooler(all_hidden_states)
        weighted_pooling_embeddings = weighted_pooling_embeddings[:, 0]
        # logits = nn.Linear(config.hidden_size, 1)(weighted_pooling_embeddings)
    return weighted_pooling_embeddings


# ---- LSTM Pooling -------------------------------------------------------------------------------------------
class LSTMPooling(nn.Module):
    def __init__(self, num_layers, hidden_size, hiddendim_lstm):
        super(LSTMPooling, self).__init__()
        self.num_hidden_layers = num_layers
        self.hidden_size = hidden_size
        self.hiddendim_lstm = hiddendim_lstm
        self.lstm = nn.LSTM(self.hidden_size, self.hiddendim_lstm, batch_first=True)
        self.dropout = nn.Dropout(0.1)

    def forward(self, all_hidden_states):
        ## forward
        hidden_states = torch.stack([all_hidden_states[layer_i][:, 0].squeeze()
                                     for layer_i in range(1, self.num_hidden_layers+1)], dim=-1)
        hidden_states = hidden_states.view(-1, self.num_hidden_layers, self.hidden_size)
        out, _ = self.lstm(hidden_states, None)
        out = self.dropout(out[:, -1, :])
        return out


def lstm_pooling(outputs, pooler):
    """The notebook's usage block; `pooler` is `LSTMPooling(config.num_hidden_layers, config.hidden_size,
    hiddendim_lstm)`, built by the caller so its weights can be set."""
    with torch.no_grad():
        all_hidden_states = torch.stack(outputs[2])
        lstm_pooling_embeddings = pooler(all_hidden_states)
        # logits = nn.Linear(hiddendim_lstm, 1)(lstm_pooling_embeddings)
    return lstm_pooling_embeddings


# ---- Attention Pooling --------------------------------------------------------------------------------------
class AttentionPooling(nn.Module):
    def __init__(self, num_layers, hidden_size, hiddendim_fc):
        super(AttentionPooling, self).__init__()
        self.num_hidden_layers = num_layers
        self.hidden_size = hidden_size
        self.hiddendim_fc = hiddendim_fc
        self.dropout = nn.Dropout(0.1)

        q_t = np.random.normal(loc=0.0, scale=0.1, size=(1, self.hidden_size))
        self.q = nn.Parameter(torch.from_numpy(q_t)).float()
        w_ht = np.random.normal(loc=0.0, scale=0.1, size=(self.hidden_size, self.hiddendim_fc))
        self.w_h = nn.Parameter(torch.from_numpy(w_ht)).float()

    def forward(self, all_hidden_states):
        hidden_states = torch.stack([all_hidden_states[layer_i][:, 0].squeeze()
                                     for layer_i in range(1, self.num_hidden_layers+1)], dim=-1)
        hidden_states = hidden_states.view(-1, self.num_hidden_layers, self.hidden_size)
        out = self.attention(hidden_states)
        out = self.dropout(out)
        return out

    def attention(self, h):
        v = torch.matmul(self.q, h.transpose(-2, -1)).squeeze(1)
        v = F.softmax(v, -1)
        v_temp = torch.matmul(v.unsqueeze(1), h).transpose(-2, -1)
        v = torch.matmul(self.w_h.transpose(1, 0), v_temp).squeeze(2)
        return v


def attention_pooling(outputs, pooler):
    """The notebook's usage block; `pooler` is `AttentionPooling(config.num_hidden_layers, config.hidden_size,
    hiddendim_fc)`, built by the caller so its q and w_h can be set."""
    with torch.no_grad():
        all_hidden_states = torch.stack(outputs[2])
        attention_pooling_embeddings = pooler(all_hidden_states)
        # logits = nn.Linear(hiddendim_fc, 1)(attention_pooling_embeddings)
    return attention_pooling_embeddings
