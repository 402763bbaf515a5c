"""Text generation with a masked language model (``mlmfast generate``).

An MLM fills [MASK] slots from both sides instead of continuing text. Its inputs here are
*prompts*: text followed by ``num_masks`` [MASK] slots (and an optional ``suffix`` after them),
or *templates*: text with the tokenizer's mask token anywhere (``"The [MASK] was [MASK]."``);
both at once work too (the template's masks plus ``num_masks`` appended ones). Strategies:

* ``left-to-right``: one forward pass per slot, always filling the leftmost slot still masked.
* ``mask-predict`` (Ghazvininejad et al. 2019): predict every slot at once, then in each of the
  following ``iterations - 1`` rounds re-mask the ``n*(T-t)/T`` least confident generated tokens
  (``n`` slots, ``T`` iterations, round ``t``) and predict them again given the rest. A kept
  token keeps the confidence it was chosen with.
* ``gibbs``: a left-to-right fill, then ``iterations`` sweeps that re-mask one slot (or a block of
  ``block_size`` slots) at a time, left to right, and resample it from the model's conditional
  given everything else.

Each choice is the argmax (``temperature=0``) or a draw from ``softmax(logits / temperature)``,
restricted to the ``top_k`` most likely tokens when ``top_k > 0``. Special tokens ([PAD], [CLS],
[SEP], [MASK], [UNK], ...), BERT's ``[unusedN]`` placeholders and ids past the tokenizer's
vocabulary are never chosen.

Seeds: output ``i`` (prompt ``i // num_samples``, sample ``i % num_samples``) draws from its own
CPU ``torch.Generator`` seeded from ``(seed, i)``, so an output depends neither on the other
outputs it was batched with, nor on ``batch_size``, nor on torch's global RNG. ``seed=None``
draws a seed from torch's default generator, so ``torch.manual_seed`` controls it as for the
masking op.

Every output is scored with its pseudo-log-likelihood (Salazar et al. 2020, see
:func:`pseudo_log_likelihood`) over all its non-special tokens, prompt included.

Example::

    from mlmfast.generate import generate, load_mlm

    model, tokenizer = load_mlm("runs/tiny/model")
    for out in generate(model, tokenizer, ["The movie was"], num_masks=5, suffix=".", seed=0):
        print(out.pseudo_log_likelihood, out.text)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

STRATEGIES = ("left-to-right", "mask-predict", "gibbs")
# Mask-predict's paper default; Gibbs sweeps each cost one forward pass per slot (or block).
DEFAULT_ITERATIONS = {"left-to-right": 1, "mask-predict": 10, "gibbs": 2}

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# BERT vocabularies reserve placeholder ids that no text ever produced; a fill with them is noise.
_PLACEHOLDER = re.compile(r"^\[unused\d+\]$")
_MASK64 = (1 << 64) - 1


@dataclass
class Generation:
    """One output of :func:`generate`.

    ``input_ids`` is the whole sequence the model saw ([CLS] ... [SEP]), with every slot filled;
    ``mask_positions`` are the indices of the slots in it; ``text`` is ``input_ids`` decoded
    without special tokens. ``seed`` is the run's seed (the output's generator is derived from
    it and the output's index).
    """

    prompt_index: int
    sample_index: int
    prompt: str
    text: str
    input_ids: list[int]
    mask_positions: list[int]
    pseudo_log_likelihood: float | None
    seed: int

    @property
    def filled_ids(self) -> list[int]:
        """The token chosen for each slot, in slot order."""
        return [self.input_ids[p] for p in self.mask_positions]


# --------------------------------------------------------------------------- loading


def load_mlm(path: str | os.PathLike, device: str | torch.device = "cpu", tokenizer: Any = None):
    """Load a masked-language model and its tokenizer from one ``save_pretrained`` directory.

    ``path`` holds ``config.json`` and the weights of a ``BertForMaskedLM`` (any
    ``AutoModelForMaskedLM`` architecture works) and, unless ``tokenizer`` is given, the tokenizer
    files. ``tokenizer`` may be a tokenizer object or a directory to load one from. Returns
    ``(model, tokenizer)`` with the model in eval mode on ``device``.

    Raises FileNotFoundError when the directory, its config or its tokenizer is missing, and
    ValueError when the checkpoint has no MLM head weights (an encoder-only checkpoint would
    get a randomly initialised head and generate noise) or does not match the tokenizer.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"model: {path!r} is not a directory; expected a save_pretrained directory of a "
            "masked-language model (config.json + weights)"
        )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"model: {path!r} has no config.json; expected a save_pretrained directory of a "
            "masked-language model"
        )
    tokenizer = _resolve_tokenizer(path, tokenizer)

    from transformers import AutoModelForMaskedLM

    from mlmfast.train.models import quiet_transformers

    try:
        with quiet_transformers():  # a load report and a progress bar per load: noise here
            model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except OSError as e:
        raise FileNotFoundError(f"model: {path!r} could not be loaded: {e}") from e
    except ValueError as e:
        raise ValueError(f"model: {path!r} is not a masked-language model checkpoint: {e}") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        prefix = model.base_model_prefix + "."
        head = [k for k in missing if not k.startswith(prefix)]
        what = "no MLM head weights" if head else "missing encoder weights"
        shown = ", ".join((head or missing)[:4]) + (" ..." if len(head or missing) > 4 else "")
        raise ValueError(
            f"model: {path!r} has {what} ({shown}); expected a *ForMaskedLM checkpoint "
            "(e.g. BertForMaskedLM.save_pretrained, as mlmfast pretrain writes), not an encoder"
        )
    _check_pair(model, tokenizer)
    return model.to(device).eval(), tokenizer


def _resolve_tokenizer(path: str, tokenizer: Any):
    if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from transformers import AutoTokenizer

    where = path if tokenizer is None else os.fspath(tokenizer)
    arg = "model" if tokenizer is None else "tokenizer"
    if not os.path.isdir(where):
        raise FileNotFoundError(f"tokenizer: {where!r} is not a directory with tokenizer files")
    if not any(os.path.isfile(os.path.join(where, f)) for f in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{arg}: {where!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save "
            "the tokenizer beside the model (tokenizer.save_pretrained) or pass tokenizer="
        )
    return AutoTokenizer.from_pretrained(where)


def _check_pair(model, tokenizer) -> None:
    if tokenizer.mask_token_id is None:
        raise ValueError(
            f"tokenizer: {type(tokenizer).__name__} has no mask token; expected an MLM tokenizer"
        )
    vocab = model.get_output_embeddings().out_features
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer: {len(tokenizer)} ids but the model predicts {vocab}; expected the "
            "tokenizer the model was trained with"
        )


# --------------------------------------------------------------------------- options


def _check_options(
    strategy: str,
    num_masks: int,
    iterations: int | None,
    temperature: float,
    top_k: int,
    num_samples: int,
    batch_size: int,
    block_size: int,
) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    for name, value, low in (
        ("num_masks", num_masks, 0),
        ("iterations", iterations, 1),
        ("top_k", top_k, 0),
        ("num_samples", num_samples, 1),
        ("batch_size", batch_size, 1),
        ("block_size", block_size, 1),
    ):
        if value is None and name == "iterations":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    # `not >=` also rejects NaN.
    if isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy argmax); got {temperature!r}")


def _max_length(model, tokenizer) -> int | None:
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    return min(limits) if limits else None


def _encode_prompts(
    tokenizer, prompts: Sequence[str], num_masks: int, suffix: str | None, max_length: int | None
) -> list[list[int]]:
    mask = tokenizer.mask_token
    tail = f" {mask}" * num_masks + (f" {suffix}" if suffix else "")
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}]: expected a string, got {type(prompt).__name__}")
        ids = tokenizer(prompt + tail)["input_ids"]
        if tokenizer.mask_token_id not in ids:
            raise ValueError(
                f"prompts[{i}] {prompt!r} has no {mask} and num_masks is 0; expected a template "
                f"containing {mask} or num_masks >= 1"
            )
        if max_length is not None and len(ids) > max_length:
            raise ValueError(
                f"prompts[{i}]: {len(ids)} tokens with its slots; the model takes at most "
                f"{max_length}"
            )
        rows.append(ids)
    return rows


def _banned(model, tokenizer, device) -> torch.Tensor:
    vocab = model.get_output_embeddings().out_features
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[len(tokenizer) :] = True
    banned[list(set(tokenizer.all_special_ids))] = True
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    banned[[i for i, t in enumerate(tokens) if t is not None and _PLACEHOLDER.match(t)]] = True
    return banned.to(device)


def _output_seed(seed: int, index: int) -> int:
    # splitmix64 twice: neighbouring (seed, index) pairs get unrelated generator streams.
    def mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return x ^ (x >> 31)

    return mix(mix(seed & _MASK64) ^ index)


# --------------------------------------------------------------------------- model calls


def _is_bert_mlm(model) -> bool:
    from transformers import BertForMaskedLM

    return isinstance(model, BertForMaskedLM)


def _logits_at(model, input_ids, attention_mask, rows, cols) -> torch.Tensor:
    """Logits ``[N, V]`` at the positions ``(rows[n], cols[n])`` only."""
    if _is_bert_mlm(model):
        # The head's [N, L, V] output over a whole batch is the largest tensor by far (GBs
        # for PLL batches); only the positions asked for are ever read.
        hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return model.cls(hidden[rows, cols])
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]


@dataclass
class _Sampler:
    model: Any
    banned: torch.Tensor
    temperature: float
    top_k: int
    generators: list[torch.Generator]
    mask_id: int

    def fill(self, ids, att, conf, sel) -> None:
        """Choose a token for every position in ``sel`` (all [MASK] in ``ids``) given the rest
        of its row, in place; ``conf`` gets the model's probability of each chosen token."""
        active = sel.any(1).nonzero().squeeze(1)
        if active.numel() == 0:
            return
        # Right padding: columns past the longest active row are padding only.
        width = int(att[active].sum(1).max())
        sub_sel = sel[active, :width]
        r, c = sub_sel.nonzero(as_tuple=True)
        logits = _logits_at(self.model, ids[active, :width], att[active, :width], r, c)
        tokens, prob = self._choose(logits.float(), active[r])
        ids[active[r], c] = tokens
        conf[active[r], c] = prob

    def _choose(self, logits, rows) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.masked_fill(self.banned, float("-inf"))
        logp = logits.log_softmax(-1)
        if self.temperature == 0:
            tokens = logits.argmax(-1)
        else:
            z = logits / self.temperature
            if self.top_k:
                kth = z.topk(min(self.top_k, z.shape[-1]), dim=-1).values[:, -1:]
                z = z.masked_fill(z < kth, float("-inf"))
            cdf = z.double().softmax(-1).cumsum(-1)
            # Inverse-CDF sampling with one uniform per position, drawn from the row's own
            # generator in position order: a row's draws never depend on its batch neighbours.
            rows_cpu = rows.cpu()
            keys, counts = torch.unique_consecutive(rows_cpu, return_counts=True)
            u = torch.cat(
                [
                    torch.rand(int(n), generator=self.generators[int(k)], dtype=torch.float64)
                    for k, n in zip(keys, counts, strict=True)
                ]
            ).to(cdf.device)
            # right=True skips zero-probability tokens (flat steps of the CDF).
            tokens = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
            tokens = tokens.squeeze(1).clamp_(max=cdf.shape[-1] - 1)
        return tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1).exp()


def _left_to_right(s: _Sampler, ids, att, conf, pending) -> None:
    pending = pending.clone()
    while pending.any():
        has = pending.any(1)
        first = pending.int().argmax(1)
        sel = torch.zeros_like(pending)
        sel[has, first[has]] = True
        s.fill(ids, att, conf, sel)
        pending &= ~sel


def _mask_predict(s: _Sampler, ids, att, conf, slots, iterations: int) -> None:
    n = slots.sum(1)
    s.fill(ids, att, conf, slots)
    positions = torch.arange(slots.shape[1], device=slots.device).expand_as(slots)
    for t in range(1, iterations):
        k = n * (iterations - t) // iterations
        if not bool((k > 0).any()):
            break  # k only shrinks with t
        order = conf.masked_fill(~slots, float("inf")).argsort(dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        sel = slots & (rank < k.unsqueeze(1))
        ids[sel] = s.mask_id
        s.fill(ids, att, conf, sel)


def _gibbs(s: _Sampler, ids, att, conf, slots, sweeps: int, block_size: int) -> None:
    _left_to_right(s, ids, att, conf, slots)
    block = (slots.long().cumsum(1) - 1) // block_size
    blocks = int(math.ceil(int(slots.sum(1).max()) / block_size))
    for _ in range(sweeps):
        for j in range(blocks):
            sel = slots & (block == j)
            ids[sel] = s.mask_id
            s.fill(ids, att, conf, sel)


# --------------------------------------------------------------------------- public API


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    *,
    num_masks: int = 0,
    suffix: str | None = None,
    strategy: str = "mask-predict",
    iterations: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    num_samples: int = 1,
    batch_size: int = 8,
    block_size: int = 1,
    device: str | torch.device | None = None,
    score: bool = True,
    pll_batch_size: int = 128,
    progress: bool = False,
) -> list[Generation]:
    """Fill the [MASK] slots of each prompt; see the module docstring for the strategies.

    model, tokenizer: a masked-language model and its tokenizer (:func:`load_mlm`), or a model
        directory for ``model`` (then ``tokenizer`` may be None: loaded from that directory).
    prompts: one string or a list; each is text followed by ``num_masks`` slots and ``suffix``,
        and/or a template with the tokenizer's mask token where slots go.
    num_masks: [MASK] slots appended to every prompt (before ``suffix``).
    strategy: ``"left-to-right"``, ``"mask-predict"`` or ``"gibbs"``.
    iterations: mask-predict rounds T (default 10) or Gibbs sweeps (default 2); left-to-right
        ignores it.
    temperature: 0 picks the argmax; otherwise sample from softmax(logits / temperature).
    top_k: sample among the k most likely tokens only (0 = all).
    seed: outputs are a pure function of (model, prompt, options, seed, output index); None
        draws one from torch's default generator.
    num_samples: outputs per prompt; outputs come prompt by prompt, samples in order.
    batch_size: sequences per forward pass (prompts are grouped by length, right-padded).
    block_size: Gibbs positions re-masked and resampled together.
    device: where to run; the model is moved there. Default: the model's device.
    score: compute each output's pseudo-log-likelihood (``pll_batch_size`` masked copies per
        forward pass); else ``pseudo_log_likelihood`` is None.
    progress: a tqdm bar over batches when there is more than one.

    Returns one :class:`Generation` per (prompt, sample).
    """
    _check_options(
        strategy, num_masks, iterations, temperature, top_k, num_samples, batch_size, block_size
    )
    model, tokenizer, device = _model_on_device(model, tokenizer, device)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if iterations is None:
        iterations = DEFAULT_ITERATIONS[strategy]
    if seed is None:
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    encoded = _encode_prompts(tokenizer, prompts, num_masks, suffix, _max_length(model, tokenizer))
    jobs = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    fill = _Fill(
        model=model,
        tokenizer=tokenizer,
        banned=_banned(model, tokenizer, device),
        device=device,
        strategy=strategy,
        iterations=iterations,
        temperature=temperature,
        top_k=top_k,
        block_size=block_size,
        seed=seed,
    )
    with _eval_mode(model):
        results = fill.all([encoded[p] for p, _ in jobs], batch_size, progress)
        scores: list[float | None] = [None] * len(jobs)
        if score:
            scores = list(
                pseudo_log_likelihood(model, tokenizer, results, batch_size=pll_batch_size)
            )
    mask_id = tokenizer.mask_token_id
    return [
        Generation(
            prompt_index=p,
            sample_index=s,
            prompt=prompts[p],
            text=tokenizer.decode(results[i], skip_special_tokens=True),
            input_ids=results[i],
            mask_positions=[j for j, t in enumerate(encoded[p]) if t == mask_id],
            pseudo_log_likelihood=scores[i],
            seed=seed,
        )
        for i, (p, s) in enumerate(jobs)
    ]


def _model_on_device(model, tokenizer, device):
    """The model (loaded when ``model`` is a directory) and its tokenizer, checked to fit, on
    ``device`` (default: where the model is)."""
    if isinstance(model, str | os.PathLike):
        model, tokenizer = load_mlm(model, device or "cpu", tokenizer)
    elif tokenizer is None:
        raise ValueError("tokenizer: None; expected a tokenizer when model is a model object")
    else:
        _check_pair(model, tokenizer)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.to(device)
    return model, tokenizer, device


@contextlib.contextmanager
def _eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` right-padded to the longest: ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r)
        att[j, : len(r)] = 1
    return ids, att


@dataclass
class _Fill:
    """Fills the slots of a batch of encoded prompts with the chosen strategy."""

    model: Any
    tokenizer: Any
    banned: torch.Tensor
    device: torch.device
    strategy: str
    iterations: int
    temperature: float
    top_k: int
    block_size: int
    seed: int

    def all(self, rows: list[list[int]], batch_size: int, progress: bool) -> list[list[int]]:
        """Every row filled, ``batch_size`` rows per batch; row ``i`` is output ``i`` (its index
        seeds its draws)."""
        from tqdm import tqdm

        # Grouping by length wastes less padding; outputs do not depend on the grouping.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        results: list[list[int]] = [[] for _ in rows]
        bar = tqdm(chunks, desc="generate", unit="batch", disable=not progress or len(chunks) < 2)
        with torch.inference_mode():
            for chunk in bar:
                filled = self.batch([rows[i] for i in chunk], chunk)
                for i, ids in zip(chunk, filled, strict=True):
                    results[i] = ids
        return results

    def batch(self, rows: list[list[int]], outputs: list[int]) -> list[list[int]]:
        """The filled ``rows``; ``outputs`` are their output indices."""
        tok = self.tokenizer
        ids, att = _pad(rows, tok.pad_token_id if tok.pad_token_id is not None else 0)
        ids, att = ids.to(self.device), att.to(self.device)
        slots = ids == tok.mask_token_id
        conf = torch.zeros(ids.shape, dtype=torch.float32, device=self.device)
        generators = [torch.Generator().manual_seed(_output_seed(self.seed, i)) for i in outputs]
        s = _Sampler(
            self.model, self.banned, self.temperature, self.top_k, generators, tok.mask_token_id
        )
        if self.strategy == "left-to-right":
            _left_to_right(s, ids, att, conf, slots)
        elif self.strategy == "mask-predict":
            _mask_predict(s, ids, att, conf, slots, self.iterations)
        else:
            _gibbs(s, ids, att, conf, slots, self.iterations, self.block_size)
        return [ids[j, : len(r)].tolist() for j, r in enumerate(rows)]


def pseudo_log_likelihood(
    model,
    tokenizer,
    texts: str | Sequence[str] | Sequence[Sequence[int]],
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> list[float]:
    """Pseudo-log-likelihood of each text (Salazar et al. 2020, "Masked Language Model Scoring").

    For every non-special token of a sequence, a copy of it with that one token masked goes
    through the model; the PLL is the sum over those copies of log p(original token), natural
    log, always <= 0. ``texts`` are strings (tokenised with special tokens) or token id
    sequences used as given (include [CLS]/[SEP] as the model expects them); special ids in
    them are context, not scored. ``batch_size`` masked copies (from one or several texts) go
    through the model per forward pass. ``device``: default the model's (the model is moved).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    seqs = _token_ids(model, tokenizer, [texts] if isinstance(texts, str) else texts)
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    special = set(tokenizer.all_special_ids)
    by_length = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    # one job per scored token: (text, position); a batch mixes texts
    jobs = [(i, p) for i in by_length for p, t in enumerate(seqs[i]) if t not in special]
    totals = [0.0] * len(seqs)
    with _eval_mode(model), torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            scored = _masked_log_probs(model, tokenizer, seqs, chunk, device)
            for (i, _), v in zip(chunk, scored, strict=True):
                totals[i] += v
    return totals


def _token_ids(model, tokenizer, texts) -> list[list[int]]:
    seqs = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            seqs.append(tokenizer(t)["input_ids"])
        elif isinstance(t, Sequence | torch.Tensor):
            seqs.append([int(x) for x in t])
        else:
            raise TypeError(
                f"texts[{i}]: expected a string or a sequence of token ids, got {type(t).__name__}"
            )
    limit = _max_length(model, tokenizer)
    for i, s in enumerate(seqs):
        if limit is not None and len(s) > limit:
            raise ValueError(f"texts[{i}]: {len(s)} tokens; the model takes at most {limit}")
    return seqs


def _masked_log_probs(model, tokenizer, seqs, chunk, device) -> list[float]:
    """log p(token) for each ``(text, position)`` of ``chunk``, that one token masked."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, att = _pad([seqs[i] for i, _ in chunk], pad)
    cols = torch.tensor([p for _, p in chunk])
    rows = torch.arange(len(chunk))
    target = ids[rows, cols].clone()
    ids[rows, cols] = tokenizer.mask_token_id
    logits = _logits_at(model, ids.to(device), att.to(device), rows.to(device), cols.to(device))
    lp = logits.float().log_softmax(-1).gather(1, target.to(device).unsqueeze(1))
    return lp.squeeze(1).tolist()


# --------------------------------------------------------------------------- CLI

DESCRIPTION = """\
Generate text with a masked-language model: each prompt is followed by --num-masks [MASK]
slots (and --suffix), or is a template with [MASK] anywhere; the chosen strategy fills the
slots. Prints every output with its pseudo-log-likelihood (PLL): the sum over its tokens of
log p(token | all the others), closer to 0 = more likely to the model."""

EXAMPLES = """\
examples:
  mlmfast generate --model runs/demo/tiny/model --prompt "this movie was" --num-masks 4
  mlmfast generate --model runs/tiny/model --prompt "the [MASK] was [MASK] ." --temperature 0
  mlmfast generate --model runs/tiny/model --prompts-file prompts.txt --num-masks 3 \\
      --strategy gibbs --num-samples 5 --json outputs.json"""


def add_parser(sub) -> None:
    """Add ``mlmfast generate`` to the ``mlmfast`` command's subparsers."""
    g = sub.add_parser(
        "generate",
        help="fill [MASK] slots with a masked-language model",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _input_options(g.add_argument)
    _sampling_options(g.add_argument)
    a = g.add_argument
    a("--device", help="cpu, cuda, cuda:1 ... (default: cuda if there is one)")
    a("--json", metavar="FILE", help="also write the outputs and settings here (default: none)")
    a("--quiet", action="store_true", help="no progress bar and no note on what to expect")
    g.set_defaults(func=_run)


def _input_options(a) -> None:
    a(
        "--model",
        required=True,
        metavar="DIR",
        help="save_pretrained directory of a BertForMaskedLM (any *ForMaskedLM) with its "
        "tokenizer, e.g. runs/tiny/model",
    )
    a("--tokenizer", metavar="DIR", help="tokenizer directory (default: the one in --model)")
    a(
        "--prompt",
        action="append",
        default=[],
        help="text followed by the slots, or a template with [MASK]; repeatable (default: none)",
    )
    a("--prompts-file", metavar="FILE", help="one prompt per line (default: none)")
    a(
        "--num-masks",
        type=int,
        default=0,
        metavar="N",
        help="[MASK] slots appended to every prompt; prompts without [MASK] need them "
        "(default: %(default)s)",
    )
    a("--suffix", help="text after the appended slots, e.g. '.' (default: none)")


def _sampling_options(a) -> None:
    a(
        "--strategy",
        choices=STRATEGIES,
        default="mask-predict",
        help="left-to-right: one slot per pass; mask-predict: all at once, then re-mask the "
        "least confident; gibbs: left-to-right, then resample each slot (default: %(default)s)",
    )
    a(
        "--iterations",
        type=int,
        metavar="N",
        help="mask-predict rounds or Gibbs sweeps (default: 10 and 2)",
    )
    for flag, kind, default, metavar, text in (
        ("--temperature", float, 1.0, "X", "0 = greedy argmax"),
        ("--top-k", int, 0, "K", "sample among the K likeliest tokens, 0 = all"),
        ("--seed", int, 0, "N", "outputs are a function of the seed"),
        ("--num-samples", int, 1, "N", "outputs per prompt"),
        ("--batch-size", int, 8, "N", "sequences per forward pass"),
        ("--block-size", int, 1, "N", "gibbs: slots resampled together"),
    ):
        a(flag, type=kind, default=default, metavar=metavar, help=f"{text} (default: %(default)s)")


def _run(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    _check_options(
        args.strategy,
        args.num_masks,
        args.iterations,
        args.temperature,
        args.top_k,
        args.num_samples,
        args.batch_size,
        args.block_size,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} but no CUDA device is available; use --device cpu")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise FileNotFoundError(
            f"json: the directory of {args.json!r} does not exist; create it or write elsewhere"
        )
    model, tokenizer = load_mlm(args.model, device=device, tokenizer=args.tokenizer)
    if not args.quiet:
        print(_what_to_expect(args.model, model), file=sys.stderr)
    outputs = generate(
        model,
        tokenizer,
        prompts,
        num_masks=args.num_masks,
        suffix=args.suffix,
        strategy=args.strategy,
        iterations=args.iterations,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        block_size=args.block_size,
        progress=not args.quiet,
    )
    for o in outputs:
        print(f"[{o.prompt_index}.{o.sample_index}] PLL {o.pseudo_log_likelihood:9.3f}  {o.text}")
    if args.json:
        record = {"settings": _settings(args, device), "outputs": [asdict(o) for o in outputs]}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except FileNotFoundError:
            raise FileNotFoundError(
                f"prompts_file: {args.prompts_file!r} does not exist; expected a text file "
                "with one prompt per line"
            ) from None
    if not prompts:
        raise ValueError("prompt: none given; expected --prompt TEXT and/or --prompts-file")
    return prompts


def _settings(args: argparse.Namespace, device: str) -> dict[str, Any]:
    names = (
        "model",
        "num_masks",
        "suffix",
        "strategy",
        "iterations",
        "temperature",
        "top_k",
        "seed",
        "num_samples",
        "batch_size",
        "block_size",
    )
    settings = {k: getattr(args, k) for k in names}
    if settings["iterations"] is None:
        settings["iterations"] = DEFAULT_ITERATIONS[args.strategy]
    settings["device"] = device
    return settings


# Below this many tokens of pre-training a model knows word frequencies and a little local
# grammar: the demo's 2-minute model has seen ~1M.
_FEW_TOKENS = 100_000_000


def _what_to_expect(path: str, model) -> str:
    """One line for a person reading the outputs: what the model's size and training (when its
    pretrain run's summary is beside it) let them expect, and what the PLL column means."""
    n = sum(p.numel() for p in model.parameters())
    seen = None
    run_summary = os.path.join(os.path.dirname(os.path.abspath(path)), "summary.json")
    with (
        contextlib.suppress(OSError, ValueError, TypeError, KeyError),
        open(run_summary, encoding="utf-8") as f,
    ):
        seen = int(json.load(f)["tokens_seen"])
    if seen is not None and seen < _FEW_TOKENS:
        expect = (
            f"a {n / 1e6:.1f}M-parameter model pre-trained on {seen / 1e6:.1f}M tokens fills "
            "slots with frequent words and short fragments, not sentences"
        )
    else:
        expect = (
            f"a {n / 1e6:.1f}M-parameter masked LM fills each slot from both sides: expect "
            "plausible words more than fluent continuations"
        )
    return (
        f"generate: {expect}; PLL (pseudo-log-likelihood) is the sum over an output's tokens of "
        "log p(token | all the others): closer to 0 = more likely to the model"
    )
