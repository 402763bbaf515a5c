"""``mlmfast pretrain``: BERT masked-language-model pre-training from shards.

Shards stream in (``mlmfast.data.ShardStream``, split by rank), unmasked batches are copied to
the device, the fused op masks them there, a transformers ``BertForMaskedLM`` learns with the
head on the selected positions only. One process per device under ``torchrun``.

Batches: ``batch_size`` rows per device per micro-step, ``grad_accum`` micro-steps per optimiser
step, so a step sees ``batch_size * grad_accum * world_size`` rows: global batches
``step * A * W ... (step + 1) * A * W - 1`` of the epoch's order (A = grad_accum, W = world size).
The same run on 1 process with ``grad_accum=2`` and on 2 processes with ``grad_accum=1`` sees the
same rows in every step, with the same masks.

Resume: a checkpoint holds the model, optimiser, scheduler, loader position, every rank's RNG
states and the step; ``resume=True`` continues from the run's newest one. On the CPU, N steps
straight and N/2 + resume + N/2 give bitwise identical weights (tested).

Where things are:

* :mod:`.config`: :class:`PretrainConfig`, the options and their checks;
* :mod:`.build`: the phases before the first step (check the inputs, build the data stream and
  the model, restore a checkpoint);
* :mod:`.loop`: the training steps, metrics lines, evaluations and checkpoints;
* :mod:`.run`: :func:`pretrain`, the run as the list of its phases, and its outputs;
* :mod:`.cli`: the ``mlmfast pretrain`` options.
"""

from mlmfast.train.pretrain.cli import add_parser
from mlmfast.train.pretrain.config import PretrainConfig
from mlmfast.train.pretrain.run import pretrain

__all__ = ["PretrainConfig", "add_parser", "pretrain"]
