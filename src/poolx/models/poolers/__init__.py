"""The built-in poolers. Importing this package registers them, in the order `poolx poolers` lists them."""

from poolx.models.poolers import tokens  # noqa: F401  pooler, cls, mean, max, mean-max
from poolx.models.poolers import conv  # noqa: F401  conv1d
from poolx.models.poolers import layers  # noqa: F401  layer-cls, concat, weighted
from poolx.models.poolers import recurrent  # noqa: F401  lstm
from poolx.models.poolers import attention  # noqa: F401  attention
from poolx.models.poolers import sbert_wk  # noqa: F401  wk
