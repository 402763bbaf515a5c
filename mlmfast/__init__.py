"""mlmfast: fused C++/CUDA masking for BERT-style masked-language-model training."""

from mlmfast.build_check import check_torch

# Before _C is loaded: another torch than the build's would fail there with an undefined symbol.
check_torch()

from mlmfast import ops  # noqa: E402
from mlmfast.collator import (  # noqa: E402
    DataCollatorForLanguageModeling,
    DataCollatorForWholeWordMask,
)
from mlmfast.ops import (  # noqa: E402
    MaskOutput,
    SpanCorruptOutput,
    compute_input_and_target_lengths,
    mask_tokens,
    mask_tokens_,
    mask_tokens_into,
    span_corrupt,
    span_corruption_lengths,
)
from mlmfast.span_collator import DataCollatorForSpanCorruption  # noqa: E402

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
