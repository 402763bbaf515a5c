"""mlmfast: fused C++/CUDA masking for BERT-style masked-language-model training."""

from mlmfast.build_check import check_torch

# Before _C is loaded: another torch than the build's would fail there with an undefined symbol.
check_torch()

from mlmfast import ops  # noqa: E402
from mlmfast.collator import (  # noqa: E402
    DataCollatorForLanguageModeling,
    DataCollatorForWholeWordMask,
)
from mlmfast.ops import MaskOutput, mask_tokens, mask_tokens_, mask_tokens_into  # noqa: E402

try:
    from mlmfast._version_build import __version__, built_with_cuda
except ImportError:  # pragma: no cover - source tree without a build
    __version__ = "0.1.0"
    built_with_cuda = False

__all__ = [
    "DataCollatorForLanguageModeling",
    "DataCollatorForWholeWordMask",
    "MaskOutput",
    "__version__",
    "built_with_cuda",
    "mask_tokens",
    "mask_tokens_",
    "mask_tokens_into",
    "ops",
]
