"""mlmfast: fused C++/CUDA masking for BERT-style masked-language-model training."""

from mlmfast import ops
from mlmfast.collator import DataCollatorForLanguageModeling, DataCollatorForWholeWordMask
from mlmfast.ops import MaskOutput, mask_tokens, mask_tokens_, mask_tokens_into

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
