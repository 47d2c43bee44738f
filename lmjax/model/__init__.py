"""Flax linen BERT: config, layers, encoder and heads. Pure: no I/O."""

from lmjax.model.config import SIZES, BertConfig
from lmjax.model.costs import flops_per_token, param_count
from lmjax.model.encoder import BertModel, Encoder
from lmjax.model.heads import BertForPreTraining, BertForSequenceClassification, MaskedLMHead
from lmjax.model.layers import Embeddings, EncoderLayer, FeedForward, MultiHeadAttention

__all__ = [
    "BertConfig", "SIZES", "flops_per_token", "param_count", "BertModel", "Encoder",
    "BertForPreTraining", "BertForSequenceClassification", "MaskedLMHead",
    "Embeddings", "EncoderLayer", "FeedForward", "MultiHeadAttention",
]
