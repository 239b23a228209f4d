"""The `mmq` command line. Every subcommand takes `--config FILE.yaml` and `--section.key value`
overrides (see `mmq config`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from recdata.errors import DataError

FORMATS = ("jsonl", "p5", "unisrec", "recbole", "amazon2014", "amazon2018", "amazon2023", "tiktok")


def _prepare(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from recdata import amazon, loaders

    kw = {"drop_unknown": args.drop_unknown, "name": args.name}
    if args.format.startswith("amazon"):
        ds = amazon.load_amazon(args.input, version=args.format[6:], meta_path=args.meta, kcore_k=args.kcore, **kw)
    else:
        if args.meta or args.kcore != 5:
            raise DataError("--meta and --kcore apply to raw Amazon dumps only", field="format")
        ds = {"jsonl": loaders.load_jsonl, "p5": loaders.load_p5, "unisrec": loaders.load_unisrec,
              "recbole": loaders.load_recbole, "tiktok": loaders.load_tiktok}[args.format](args.input, **kw)
    loaders.attach_features(ds, args.features or [])
    ds.save(args.output)
    stats = ds.stats()
    stats["output"] = str(args.output)
    if not args.json:
        print(f"{stats['name']}: {stats['users']:,} users / {stats['items']:,} items / "
              f"{stats['interactions']:,} interactions; mean sequence length {stats['mean_sequence_length']:.2f}")
        if stats.get("dropped"):
            print(f"dropped on request: {stats['dropped']}")
        if stats.get("filtering"):
            print(f"k-core filtering removed: {stats['filtering']}")
        print(f"written to {args.output}")
    return stats


def _dataset_arg(args: argparse.Namespace, cfg) -> str:
    dataset = args.dataset or cfg.data.dataset
    if not dataset:
        raise DataError("no dataset given (--dataset DIR)", field="data.dataset")
    return dataset


def _encode(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq.pipeline import build_modalities
    from recdata.io import write_json, write_npy
    from recdata.schema import RecDataset

    dataset = _dataset_arg(args, cfg)
    ds = RecDataset.load(dataset)
    if args.modalities:
        cfg.encode.modalities = args.modalities
    out = Path(args.output or Path(dataset) / "embeddings")
    t0 = time.perf_counter()
    mats = build_modalities(ds, cfg, dataset_dir=dataset, show_progress=not args.json)
    info = {"dataset": str(dataset), "output": str(out), "seconds": round(time.perf_counter() - t0, 2),
            "modalities": {k: list(v.shape) for k, v in mats.items()}}
    for name, m in mats.items():
        write_npy(out / f"{name}.npy", m)
    write_json(out / "modalities.json", info)
    if not args.json:
        for name, shape in info["modalities"].items():
            print(f"{name}: {shape[0]:,} x {shape[1]} -> {out / (name + '.npy')}")
    return info


def _tokenize(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq.pipeline import run_tokenize
    from recdata.schema import RecDataset
    from tokenizer.api import format_quality

    dataset = _dataset_arg(args, cfg)
    if args.tokenizer:
        cfg.tokenize.tokenizer = args.tokenizer
    if args.modalities:
        cfg.encode.modalities = args.modalities
    if args.sid_table:
        cfg.tokenize.external.path = args.sid_table
    ds = RecDataset.load(dataset)
    result = run_tokenize(ds, cfg, dataset_dir=dataset, show_progress=not args.json)
    out = Path(args.output or Path(cfg.output_dir) / "tokenizer")
    result.save_pretrained(out)
    q = {**result.quality, "output": str(out)}
    if not args.json:
        print(format_quality(q))
        print(f"saved to {out} (config.json, model.safetensors, sid_table.json, quality.json)")
    return q


def _train(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq.pipeline import run_train
    from recdata.schema import RecDataset

    dataset = _dataset_arg(args, cfg)
    out = args.output or str(Path(cfg.output_dir) / "generator")
    result = run_train(RecDataset.load(dataset), cfg, args.tokenizer_dir, out, show_progress=not args.json)
    if not args.json:
        print(f"trained {result['steps']} steps in {result['train_seconds']:.0f}s; best validation "
              f"{cfg.train.metric} {result[f'best_valid_{cfg.train.metric}']} at step {result['best_step']} "
              f"-> {result['best_model']}")
    return result


def _evaluate(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from eval.report import write_report
    from mmq.pipeline import run_evaluate
    from recdata.schema import RecDataset

    dataset = _dataset_arg(args, cfg)
    result = run_evaluate(RecDataset.load(dataset), cfg, args.model, args.split, show_progress=not args.json)
    if args.report:
        md, _ = write_report(args.report, f"Generator evaluation ({args.split} split)", {"generator": result["metrics"]},
                             cfg.eval.ks, preamble=f"Model `{args.model}`, dataset `{dataset}`, beam "
                             f"{result['beam_width']}, {result['users']:,} users, decoded in "
                             f"{result['decode_seconds']}s on {result['device']}.", extra=result)
        result["report"] = str(md)
    if not args.json:
        from eval.report import metrics_table
        for g in ("all", "head", "tail", "long_tail", "cold"):
            if result["metrics"].get(g, {}).get("users"):
                print(f"[{g}]\n" + metrics_table({"generator": result["metrics"]}, g, cfg.eval.ks))
        print(f"invalid-ID rate {result['metrics']['all']['invalid_rate']:.4f}; {result['users_per_second']} users/s")
    return result


def _recommend(args: argparse.Namespace, cfg) -> Any:
    from generator.recommend import Recommender

    rec = Recommender.from_pretrained(args.model)
    if args.users_file:
        histories, users = [], []
        for lineno, line in enumerate(Path(args.users_file).read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                users.append(str(obj["user_id"]))
                histories.append([str(i) for i in obj["history"]])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"expected {{\"user_id\": ..., \"history\": [item ids]}} ({e})",
                                path=args.users_file, line=lineno) from None
    else:
        if not args.history:
            raise DataError("give --history ITEM ... or --users-file FILE", field="history")
        histories, users = [args.history], [args.user]
    recs = rec.recommend(histories, k=args.k, beam_width=max(cfg.decode.beam_width, args.k),
                         users=users if rec.codec.uses_users else None)
    out = [{"user_id": u, "recommendations": [r.__dict__ for r in rs]} for u, rs in zip(users, recs, strict=True)]
    if not args.json:
        for entry in out:
            if entry["user_id"] is not None:
                print(f"user {entry['user_id']}:")
            for rank, r in enumerate(entry["recommendations"], start=1):
                title = f"  {r['title']}" if r.get("title") else ""
                print(f"{rank:3d}. {r['item_id']:<14} {r['score']:9.4f}  {r['sid']}{title}")
    return out if args.users_file else out[0]


def _demo(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq.demo import run_demo

    if args.output:
        cfg.output_dir = args.output
    return run_demo(cfg, log=(lambda s: None) if args.json else print)


def _config(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq.config import to_dict, to_yaml

    if not args.json:
        print(to_yaml(cfg))
    return to_dict(cfg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmq", description="MMQ-Rec: generative retrieval on multimodal semantic IDs.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", help="YAML file overriding the defaults (see `mmq config`)")
        sp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("prepare", _prepare, "Convert a dataset into MMQ-Rec's dataset directory and print its size.")
    sp.add_argument("--format", required=True, choices=FORMATS)
    sp.add_argument("--input", required=True, help="input directory (or the reviews file for raw Amazon dumps)")
    sp.add_argument("--output", required=True, help="dataset directory to write")
    sp.add_argument("--meta", help="raw Amazon dumps: the metadata file, if --input is the reviews file")
    sp.add_argument("--kcore", type=int, default=5, help="raw Amazon dumps: k-core filtering (default 5)")
    sp.add_argument("--name", help="dataset name (default: from the input)")
    sp.add_argument("--drop-unknown", action="store_true",
                    help="drop (and count) interactions with items missing from the item table instead of failing")
    sp.add_argument("--features", nargs="*", metavar="NAME=PATH.npy",
                    help="attach per-item feature matrices as extra modalities")

    sp = add("encode", _encode, "Build the modality embedding matrices of a dataset (cached).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--modalities", nargs="+", help="text attributes image collaborative or a stored feature name")
    sp.add_argument("--output", help="directory for <modality>.npy (default: DATASET/embeddings)")

    sp = add("tokenize", _tokenize, "Fit an item tokenizer and write the semantic-ID table with its quality numbers.")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer", choices=("mmq", "rqvae", "rqkmeans", "random", "external"))
    sp.add_argument("--modalities", nargs="+", help="modalities to tokenize (default: config encode.modalities)")
    sp.add_argument("--sid-table", help="external tokenizer: JSON table such as letter.index.json")
    sp.add_argument("--output", help="tokenizer directory to write (default: OUTPUT_DIR/tokenizer)")

    sp = add("train", _train, "Train the seq2seq generator on a dataset's training split (accelerate).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer-dir", required=True, help="output of `mmq tokenize` for this dataset")
    sp.add_argument("--output", help="run directory (default: OUTPUT_DIR/generator); rerun to resume")

    sp = add("evaluate", _evaluate, "Evaluate a trained generator (full catalogue, per popularity bucket).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--model", required=True, help="generator directory (e.g. RUN/best)")
    sp.add_argument("--split", choices=("test", "valid"), default="test")
    sp.add_argument("--report", help="write REPORT.md and REPORT.json")

    sp = add("recommend", _recommend, "Recommend items for a history (or a file of users) with a trained generator.")
    sp.add_argument("--model", required=True, help="generator directory")
    sp.add_argument("--history", nargs="*", metavar="ITEM", help="item ids, oldest first")
    sp.add_argument("--user", help="the user's id (needed by a generator trained with hashed user tokens)")
    sp.add_argument("--users-file", help="JSON lines {\"user_id\": ..., \"history\": [item ids]}")
    sp.add_argument("--k", type=int, default=10)

    sp = add("demo", _demo, "Run every stage on a built-in synthetic catalogue (offline, a few minutes on CPU).")
    sp.add_argument("--output", help="output directory (default: config output_dir)")

    add("config", _config, "Print the resolved configuration with its documentation.")
    return p


def main(argv: list[str] | None = None) -> int:
    from mmq.config import load_config

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config, rest)
        result = args.fn(args, cfg)
    except DataError as e:
        print(f"mmq {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=None, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
