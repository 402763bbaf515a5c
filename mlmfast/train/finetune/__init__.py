"""``mlmfast finetune``: fine-tune a BERT encoder for sequence classification (CSV/JSONL/Parquet
files or the embedded IMDB, Rotten Tomatoes and BBC News sets) or part-of-speech tagging
(shards of ``mlmfast prepare --pos``), and measure what fine-tuning cost the encoder.

Initialisation (``init``): a model directory, a pretrain run or one of its checkpoints; by
default the embedded MiniLM-L6-H384 encoder. ``init="random"`` builds the same architecture
(the config of ``arch``, default the embedded MiniLM) with weights drawn from ``seed``: the
pre-trained-versus-random comparison with everything else equal.

Strategies (``strategy``):

* ``full``: every weight trains.
* ``feature-extraction``: the encoder (embeddings and all layers) is frozen; the head trains.
  The head is the classifier and, for sequence classification, BERT's pooler (the dense + tanh
  over [CLS]): the pooler is a task projection of one token that the MLM objective never uses,
  so training it leaves every token representation, and with it the general-corpus MLM loss,
  exactly as it was, while giving the classifier a trained non-linear layer. The same holds in
  every strategy: the pooler always counts as head.
* ``top-k`` (``top_k``): only the last k encoder layers and the head train.
* ``lora``: PEFT LoRA adapters (``lora_r``, ``lora_alpha``, ``lora_dropout``) on the linear
  modules named in ``lora_targets`` inside the encoder layers (default ``query,value``); the
  head trains fully (PEFT ``modules_to_save``). The adapters are saved to ``OUT/adapter``
  (``PeftModel.from_pretrained(base, OUT/adapter)``), the merged model to ``OUT/model``.
* ``rehearsal``: full fine-tuning plus ``rehearsal_weight`` x the MLM loss on batches of general
  shards (``rehearsal_data``), masked on the device like pre-training, predicted by an MLM head
  whose decoder is the encoder's own word-embedding matrix (tied) and whose transform trains
  along. Both losses are logged.

``layer_decay`` (layer-wise learning-rate decay) applies to any strategy. ``lr`` defaults per
strategy (:data:`DEFAULT_LR`): a frozen encoder with a fresh head wants a larger step than a
full fine-tune.

Catastrophic forgetting (``general_data``): the MLM loss and masked-token accuracy on held-out
general shards, before and after fine-tuning, with :func:`~mlmfast.train.mlm.evaluate_mlm`'s
fixed evaluation mask. An encoder-only init (the embedded MiniLM, any ``BertModel`` directory,
``random``) has no trained MLM head, so its "before" loss would be that of a random head. So:

1. before fine-tuning, an MLM head is fitted on the frozen initial encoder: ``mlm_head_steps``
   AdamW steps (default 200) on ``mlm_head_data`` (default: ``rehearsal_data`` when given,
   else ``general_data`` itself). Only the head's transform and output bias learn; its decoder
   is the encoder's word-embedding matrix, as in BERT. Fitting on the evaluation text is
   allowed because the same head serves both measurements and the encoder is frozen while it
   is fitted: the head learns to read the initial encoder, and any change of the loss
   afterwards comes from the encoder. Pass separate shards to keep the "before" number itself
   honest held-out text too (the study does);
2. "before" = that head on the initial encoder;
3. the head is kept fixed, and "after" = the same head on the fine-tuned encoder (its
   embeddings are the fine-tuned ones, since the decoder is tied to them).

When the init already has a trained MLM head (a pretrain run), it is used as it is and nothing
is fitted (``mlm_head_steps=None``, the default; a number forces fitting). The fitted head is
saved to ``OUT/mlm_head.safetensors`` (+ ``.json``) and can be reused by another run from the
same init (``mlm_head=PATH``), so a comparison of strategies measures every run with one head.
For ``rehearsal`` the summary also reports "after" with the head that trained along
(``after_rehearsal_head``).

Drift: per-block relative weight change (:func:`~mlmfast.train.analysis.layer_weight_drift`)
and per-layer linear CKA of the hidden states before/after on validation probe batches
(:func:`~mlmfast.train.analysis.layer_cka`), in the summary and plotted to ``OUT/drift.png``.

Training: AdamW without decay on biases and LayerNorm, linear/cosine/constant schedule with
warmup, gradient clipping, bf16 autocast on CUDA (fp32 on the CPU), validation every
``eval_every`` steps and at the end of every epoch, early stopping on the validation ``metric``
(``early_stopping_patience`` evaluations without improvement) and the best weights restored at
the end; accuracy and macro-F1 on validation and test. Batches: a seeded permutation per epoch
(``group_by_length`` sorts windows of 50 batches by length first, then shuffles the batches, to
pad less). Checkpoints (atomic, ``keep_last``) hold the model (for LoRA the adapter), optimiser,
scheduler, position in the epoch, rehearsal loader and head, the best weights so far and every
RNG; ``resume=True`` continues exactly (on the CPU, N steps straight and N/2 + resume + N/2
give bitwise identical weights, tested). Ctrl-C/SIGTERM saves a checkpoint and exits.
One process: fine-tuning these models does not need DistributedDataParallel, and finetune
refuses to run under ``torchrun`` with more than one process.

Outputs in ``OUT``: ``summary.json``, ``model/`` (``save_pretrained`` + tokenizer), ``adapter/``
(lora), ``drift.png``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``, ``config.json``.

POS tagging (``task="pos"``, ``data`` = shards of ``mlmfast prepare --pos``):
``BertForTokenClassification`` over the Universal POS tags, one label on the first subword of
each word (:func:`~mlmfast.train.tasks.pos_tagging_batch`); accuracy and macro-F1 over labelled
tokens. Rows are split train/validation/test by a keyed hash of their ``sample_id`` with
``split_seed``, so the split depends on nothing else.

Where things are:

* :mod:`.config`: :class:`FinetuneConfig`, the options and their checks;
* :mod:`.inputs`: the first phase, everything a user can get wrong checked before a model is
  built;
* :mod:`.data`: the task data, the batches of an epoch, the probe batches;
* :mod:`.model`: the task model, the strategies (freezing, LoRA), saving it;
* :mod:`.forgetting`: the MLM head and the general-shard MLM loss before and after;
* :mod:`.training`: what trains (optimiser, schedule, rehearsal), the progress, checkpoints;
* :mod:`.loop`: the training steps, metrics lines, validation and early stopping;
* :mod:`.evaluation`: accuracy and macro-F1 of a split;
* :mod:`.run`: :func:`finetune`, the run as the list of its phases, and its outputs;
* :mod:`.cli`: the ``mlmfast finetune`` options.
"""

from mlmfast.train.finetune.cli import add_parser
from mlmfast.train.finetune.config import (
    DEFAULT_LR,
    METRICS,
    STRATEGIES,
    TASKS,
    FinetuneConfig,
)
from mlmfast.train.finetune.data import epoch_batches
from mlmfast.train.finetune.evaluation import classification_metrics
from mlmfast.train.finetune.run import finetune

__all__ = [
    "DEFAULT_LR",
    "METRICS",
    "STRATEGIES",
    "TASKS",
    "FinetuneConfig",
    "add_parser",
    "classification_metrics",
    "epoch_batches",
    "finetune",
]
