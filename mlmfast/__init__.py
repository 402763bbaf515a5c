"""mlmfast: fused C++/CUDA masking for BERT-style masked-language-model training."""

from mlmfast import ops
from mlmfast.collator import DataCollatorForLanguageModeling, DataCollatorForWholeWordMask
from mlmfast.ops import (
    MaskOutput,
    SpanCorruptOutput,
    compute_input_and_target_lengths,
    mask_tokens,
    mask_tokens_,
    mask_tokens_into,
    span_corrupt,
    span_corruption_lengths,
)
from mlmfast.span_collator import DataCollatorForSpanCorruption

try:
    from mlmfast._version_build import __version__, built_with_cuda
except ImportError:  # pragma: no cover - source tree without a build
    __version__ = "0.1.0"
    built_with_cuda = False

__all__ = [
    "DataCollatorForSpanCorruption",
    "DataCollatorForLanguageModeling",
    "DataCollatorForWholeWordMask",
    "MaskOutput",
    "SpanCorruptOutput",
    "__version__",
    "built_with_cuda",
    "compute_input_and_target_lengths",
    "mask_tokens",
    "mask_tokens_",
    "mask_tokens_into",
    "ops",
    "span_corrupt",
    "span_corruption_lengths",
]
