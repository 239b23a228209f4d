"""The `mmq` command line: a thin front end to `mmq_rec.pipeline.Pipeline`. Every subcommand
takes `--config FILE.yaml` and `--section.key value` overrides (see `mmq config`); bad input ends
in one line, `mmq <command>: error: ...`, naming the file, line or field, with exit code 2."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.loaders import FORMATS


def _prepare(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.recdata import amazon, loaders
    from mmq_rec.recdata.io import check_output

    # Refuse a bad output or feature name before the (slow) load, and before anything is written.
    features = loaders.parse_feature_specs(args.features or [])
    check_output(args.output, "dataset", overwrite=args.overwrite,
                 inputs=(args.input, args.meta, *(path for _, path in features)))
    kw = {"drop_unknown": args.drop_unknown, "name": args.name, "min_rating": args.min_rating,
          "drop_repeats": args.drop_repeats}
    if args.format.startswith("amazon"):
        ds = amazon.load_amazon(args.input, version=args.format[6:], meta_path=args.meta, kcore_k=args.kcore, **kw)
    else:
        if args.meta or args.kcore != 5:
            raise DataError("--meta and --kcore apply to raw Amazon dumps only", field="format")
        ds = {"jsonl": loaders.load_jsonl, "p5": loaders.load_p5, "unisrec": loaders.load_unisrec,
              "recbole": loaders.load_recbole, "tiktok": loaders.load_tiktok}[args.format](args.input, **kw)
    loaders.attach_features(ds, args.features or [])
    try:
        ds.save(args.output, overwrite=args.overwrite)
    except OSError as e:
        raise DataError(f"cannot write the dataset ({e.strerror or e})", path=args.output) from None
    stats = ds.stats()
    stats["output"] = str(args.output)
    # Facts about the data that change what the numbers mean: always said, on stderr so that
    # --json output stays one object.
    ratings, repeats, tied = stats.get("ratings"), stats.get("repeats", {}), stats.get("tied_target_users", 0)
    if ratings and args.min_rating is None:
        print(f"note: all {ratings['rated_interactions']:,} rated interactions are taken as positives "
              f"({ratings['below_4']:,} are rated below 4; --min-rating R drops those below R)", file=sys.stderr)
    if repeats.get("interactions") and not args.drop_repeats:
        print(f"note: {repeats['interactions']:,} repeat interactions (a user meeting an item again) in "
              f"{repeats['users']:,} users are kept; --drop-repeats keeps only each first one", file=sys.stderr)
    if tied:
        print(f"warning: {tied:,} users have a validation or test target decided by a tied timestamp "
              "(the file order breaks the tie)", file=sys.stderr)
    if not args.json:
        print(f"{stats['name']}: {stats['users']:,} users / {stats['items']:,} items / "
              f"{stats['interactions']:,} interactions; mean sequence length {stats['mean_sequence_length']:.2f}")
        if stats.get("dropped"):
            print(f"dropped on request: {stats['dropped']}")
        if stats.get("filtering"):
            print(f"k-core filtering removed: {stats['filtering']}")
        print(f"written to {args.output}")
    return stats


def _pipeline(args: argparse.Namespace, cfg):
    from mmq_rec.pipeline import Pipeline

    return Pipeline(cfg, show_progress=not args.json)


def _encode(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.recdata.io import check_output, claim_dir, write_json, write_npy

    pipe = _pipeline(args, cfg)
    ds = pipe.dataset()
    out = Path(args.output or Path(ds.meta["path"]) / "embeddings")
    check_output(out, "embeddings", overwrite=args.overwrite, inputs=(ds.meta["path"],), replaces=False)
    t0 = time.perf_counter()
    mats = pipe.modalities(ds)
    claim_dir(out, "embeddings", overwrite=args.overwrite, inputs=(ds.meta["path"],))
    info = {"dataset": ds.meta["path"], "output": str(out), "seconds": round(time.perf_counter() - t0, 2),
            "modalities": {k: list(v.shape) for k, v in mats.items()}}
    for name, m in mats.items():
        write_npy(out / f"{name}.npy", m)
    write_json(out / "modalities.json", info)
    if not args.json:
        for name, shape in info["modalities"].items():
            print(f"{name}: {shape[0]:,} x {shape[1]} -> {out / (name + '.npy')}")
    return info


def _tokenize(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.tokenizer.api import format_quality

    pipe = _pipeline(args, cfg)
    out = Path(args.output or Path(cfg.output_dir) / "tokenizer")
    result = pipe.tokenize(pipe.dataset(), out, overwrite=args.overwrite)
    q = {**result.quality, "output": str(out)}
    if not args.json:
        print(format_quality(q))
        print(f"saved to {out} (config.json, model.safetensors, sid_table.json, quality.json)")
    return q


def _train(args: argparse.Namespace, cfg) -> dict[str, Any]:
    pipe = _pipeline(args, cfg)
    out = args.output or str(Path(cfg.output_dir) / "generator")
    result = pipe.train(pipe.dataset(), args.tokenizer_dir, out, overwrite=args.overwrite,
                        finetune=args.finetune)
    if not args.json:
        print(f"trained {result['steps']} steps in {result['train_seconds']:.0f}s; best validation "
              f"{cfg.train.metric} {result[f'best_valid_{cfg.train.metric}']} at step {result['best_step']} "
              f"-> {result['best_model']}")
        _print_stage2(result)
    return result


def _print_stage2(result: dict[str, Any]) -> None:
    if not result.get("stage2"):
        return
    s2 = result["stage2"]
    util = [round(sum(s2[w]["utilisation"]) / len(s2[w]["utilisation"]), 3) for w in ("before", "after")]
    print(f"stage 2: {s2['changed_sids']['items']:.1%} of items changed SID (per position "
          f"{', '.join(f'{v:.1%}' for v in s2['changed_sids']['per_position'])}); mean utilisation "
          f"{util[0]} -> {util[1]}, collision rate {s2['before']['collision_rate']:.4f} -> "
          f"{s2['after']['collision_rate']:.4f}; fine-tuned tokenizer -> {result['tokenizer_dir']}")


def _finetune(args: argparse.Namespace, cfg) -> dict[str, Any]:
    args.finetune = True
    return (_train if args.for_ == "generator" else _rank_train)(args, cfg)


def _print_metrics(args: argparse.Namespace, cfg, name: str, result: dict[str, Any], title: str,
                   preamble: str) -> dict[str, Any]:
    """The per-bucket tables of `evaluate` and `baseline`, printed and (`--report`) written."""
    from mmq_rec.eval.report import metrics_table, write_report

    if args.report:
        md, _ = write_report(args.report, title, {name: result["metrics"]}, cfg.eval.ks, preamble=preamble,
                             extra=result)
        result["report"] = str(md)
    if not args.json:
        for g in ("all", "head", "tail", "long_tail", "cold"):
            if result["metrics"].get(g, {}).get("users"):
                print(f"[{g}]\n" + metrics_table({name: result["metrics"]}, g, cfg.eval.ks))
        print(f"invalid-ID rate {result['metrics']['all']['invalid_rate']:.4f}; {result['users_per_second']} users/s")
    return result


def _evaluate(args: argparse.Namespace, cfg) -> dict[str, Any]:
    pipe = _pipeline(args, cfg)
    ds = pipe.dataset()
    result = pipe.evaluate(ds, args.model, args.split, exclude_history=args.exclude_history)
    return _print_metrics(args, cfg, "generator", result, f"Generator evaluation ({args.split} split)",
                          f"Model `{args.model}`, dataset `{ds.meta['path']}`, beam {result['beam_width']}, "
                          f"{'history excluded, ' if args.exclude_history else ''}"
                          f"{result['users']:,} users, decoded in {result['decode_seconds']}s on {result['device']}.")


def _baseline(args: argparse.Namespace, cfg) -> dict[str, Any]:
    pipe = _pipeline(args, cfg)
    ds = pipe.dataset()
    result = pipe.baseline(ds, args.method, args.split, args.modality)
    name = args.method + (f"({result['modality']})" if "modality" in result else "")
    return _print_metrics(args, cfg, name, result, f"Baseline {name} ({args.split} split)",
                          f"Dataset `{ds.meta['path']}`, {result['users']:,} users.")


def _rank_train(args: argparse.Namespace, cfg) -> dict[str, Any]:
    pipe = _pipeline(args, cfg)
    out = args.output or str(Path(cfg.output_dir) / "ranker")
    result = pipe.rank_train(pipe.dataset(), args.tokenizer_dir, out, overwrite=args.overwrite,
                             finetune=args.finetune)
    if not args.json:
        print(f"trained the {cfg.ranker.representation} ranker {result['epochs']} epochs in "
              f"{result['train_seconds']:.0f}s (stopped by {result['stopped']}); best validation {cfg.ranker.metric} "
              f"{result[f'best_valid_{cfg.ranker.metric}']:.4f} at epoch {result['best_epoch']} -> {result['best_model']}")
        _print_stage2(result)
    return result


def _rank_evaluate(args: argparse.Namespace, cfg) -> dict[str, Any]:
    pipe = _pipeline(args, cfg)
    ds = pipe.dataset()
    if args.candidates is not None and not args.model:
        raise DataError("--candidates re-ranks a generator's candidates: give the generator with --model",
                        field="candidates")
    result = pipe.rank_evaluate(ds, args.ranker, args.split, generator=args.model, candidates=args.candidates,
                                exclude_history=args.exclude_history)
    if args.model:
        name = f"generate({result['candidates']})->rank"
        how = (f"the top {result['candidates']} of generator `{args.model}` re-ranked (fusion weight "
               f"{result['fusion_weight']}, chosen on validation)")
    else:
        name = "ranker" + (" (history excluded)" if args.exclude_history else "")
        how = "the whole catalogue ranked" + (", the user's own history excluded" if args.exclude_history else "")
    return _print_metrics(args, cfg, name, result, f"Ranker evaluation ({args.split} split)",
                          f"Ranker `{args.ranker}`, dataset `{ds.meta['path']}`: {how}; {result['users']:,} users "
                          f"in {result['decode_seconds']}s on {result['device']}.")


def _rank_calibrate(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.ranker.rank import CORRECTION_GRID

    pipe = _pipeline(args, cfg)
    res = pipe.rank_calibrate(pipe.dataset(), args.ranker, args.output, reference=args.reference, floor=args.floor,
                              max_drop=args.max_drop, grid=args.grid or CORRECTION_GRID, metric=args.metric,
                              overwrite=args.overwrite)
    if not args.json:
        m = res["metric"]
        print(f"| T | valid {m} | " + " | ".join(f"{g} {m}" for g in res["sweep"]["0.0"] if g != "all") + " |")
        for t, v in res["sweep"].items():
            mark = " ←" if float(t) == res["chosen"] else ""
            print(f"| {t}{mark} | {v['all']:.4f} | " + " | ".join(f"{x:.4f}" for g, x in v.items() if g != "all") + " |")
        met = "" if res["floor_met"] else " (no T reaches the floor: T = 0, the ranker as trained)"
        print(f"floor {res['floor']:.4f} ({m}, validation, {res['users']:,} users); chosen T = {res['chosen']}{met} "
              f"-> {res['output']}")
    return res


def _benchmark(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.benchmark import run_benchmark

    out = args.output or cfg.output_dir
    report = run_benchmark(cfg, out, show_progress=not args.json, log=(lambda s: None) if args.json else print,
                           command=args.command_line, overwrite=args.overwrite)
    if not args.json:
        print("\n".join(report["answers"]))
        print(f"report -> {report['files']['html']} (also report.md, report.json)")
    return {"files": report["files"], "answers": report["answers"]}


def _report(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.benchmark import compose_from_files, write_report_files
    from mmq_rec.recdata.io import claim_dir

    report = compose_from_files(args.runs, args.title)  # bad inputs stop before anything is written
    report["command"] = args.command_line
    out = claim_dir(args.output, "report", inputs=tuple(args.runs), overwrite=args.overwrite)
    files = write_report_files(report, out)
    if not args.json:
        print("\n".join(report["answers"]))
        print(f"report -> {files['html']} (also report.md, report.json)")
    return {"files": files, "answers": report["answers"]}


def _read_users_file(path: str) -> tuple[list[list[str]], list[str]]:
    histories, users = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the users file ({e})", path=path) from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg})", path=path, line=lineno) from None
        if not isinstance(obj, dict) or "history" not in obj:
            raise DataError('expected {"user_id": ..., "history": [item ids]}', path=path, line=lineno)
        hist = obj["history"]
        if not isinstance(hist, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in hist):
            raise DataError(f"must be a list of item ids, got {hist!r:.60}", path=path, line=lineno, field="history")
        users.append(None if obj.get("user_id") is None else str(obj["user_id"]))
        histories.append([str(i) for i in hist])
    if not histories:
        raise DataError("no users in the file", path=path)
    return histories, users


def _recommend(args: argparse.Namespace, cfg) -> Any:
    if args.users_file:
        histories, users = _read_users_file(args.users_file)
    else:
        if not args.history:
            raise DataError("give --history ITEM ... or --users-file FILE", field="history")
        histories, users = [args.history], [args.user]
    recs = _pipeline(args, cfg).recommend(args.model, histories, k=args.k, users=users, ranker_dir=args.ranker)
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
    from mmq_rec.demo import run_demo
    from mmq_rec.pipeline import Pipeline

    pipe = Pipeline(cfg, show_progress=False, log=(lambda s: None) if args.json else print)
    return run_demo(pipe, args.output, overwrite=args.overwrite)


def _config(args: argparse.Namespace, cfg) -> dict[str, Any]:
    from mmq_rec.config import to_dict, to_yaml

    if not args.json:
        print(to_yaml(cfg))
    return to_dict(cfg)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# Command-line flags that are shorthands for configuration keys: they are applied as overrides,
# so the configuration validated, printed and stored with a run is the one used.
FLAG_KEYS = {"dataset": "data.dataset", "tokenizer": "tokenize.tokenizer", "modalities": "encode.modalities",
             "sid_table": "tokenize.external.path", "device": "device"}


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            node = out
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return out


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
    sp.add_argument("--min-rating", type=float, metavar="R",
                    help="rated sources: drop (and count) interactions rated below R (default: keep all)")
    sp.add_argument("--drop-repeats", action="store_true",
                    help="drop (and count) a user's repeat interactions with an item, keeping the first")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an earlier output of MMQ-Rec at --output (never anything else)")

    def overwrite(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an earlier output of MMQ-Rec at --output (never anything else)")

    def device(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available, else the CPU; "
                                         "the config key `device`)")

    sp = add("encode", _encode, "Build the modality embedding matrices of a dataset (cached).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--modalities", nargs="+", help="text attributes image collaborative or a stored feature name")
    sp.add_argument("--output", help="directory for <modality>.npy (default: DATASET/embeddings)")
    overwrite(sp)
    device(sp)

    sp = add("tokenize", _tokenize, "Fit an item tokenizer and write the semantic-ID table with its quality numbers.")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer", choices=("mmq", "rqvae", "rqkmeans", "random", "external"))
    sp.add_argument("--modalities", nargs="+", help="modalities to tokenize (default: config encode.modalities)")
    sp.add_argument("--sid-table", help="external tokenizer: JSON table such as letter.index.json")
    sp.add_argument("--output", help="tokenizer directory to write (default: OUTPUT_DIR/tokenizer)")
    overwrite(sp)
    device(sp)

    sp = add("train", _train, "Train the seq2seq generator on a dataset's training split (accelerate).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer-dir", required=True, help="output of `mmq tokenize` for this dataset")
    sp.add_argument("--output", help="run directory (default: OUTPUT_DIR/generator); rerun to resume")
    sp.add_argument("--finetune", action="store_true",
                    help="MMQ stage 2: train the MMQ (or RQ-KMeans) tokenizer with the generator's loss "
                         "(finetune.* settings; item input mode); the fine-tuned tokenizer goes to "
                         "OUTPUT/best/tokenizer")
    overwrite(sp)
    device(sp)

    sp = add("finetune", _finetune, "MMQ stage 2: train an MMQ or RQ-KMeans tokenizer with a downstream model's "
                                    "loss (soft indexing); the same as `mmq train --finetune` or "
                                    "`mmq rank train --finetune`.")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer-dir", required=True, help="an MMQ or RQ-KMeans tokenizer (output of `mmq tokenize`)")
    sp.add_argument("--for", dest="for_", required=True, choices=("generator", "ranker"),
                    help="the downstream model whose loss trains the tokenizer")
    sp.add_argument("--output", help="run directory (default: OUTPUT_DIR/generator or OUTPUT_DIR/ranker); the "
                                     "fine-tuned model is OUTPUT/best, the fine-tuned tokenizer OUTPUT/best/tokenizer")
    overwrite(sp)
    device(sp)

    sp = add("evaluate", _evaluate, "Evaluate a trained generator (full catalogue, per popularity bucket).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--model", required=True, help="generator directory (e.g. RUN/best)")
    sp.add_argument("--exclude-history", action="store_true",
                    help="never recommend an item the user already has (the beam's other items move up)")
    device(sp)
    sp.add_argument("--split", choices=("test", "valid"), default="test")
    sp.add_argument("--report", help="write REPORT.md and REPORT.json")

    sp = add("baseline", _baseline, "Evaluate a reference recommender (popularity or content kNN) with the same "
                                    "split, buckets and metrics as `evaluate`.")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--method", required=True, choices=("popularity", "knn"))
    device(sp)
    sp.add_argument("--modality", help="knn: the modality to compare items in (default: the first of "
                                       "encode.modalities)")
    sp.add_argument("--split", choices=("test", "valid"), default="test")
    sp.add_argument("--report", help="write REPORT.md and REPORT.json")

    rank = sub.add_parser("rank", help="Train or evaluate the ranker (SID / item-ID embeddings).",
                          description="Train or evaluate the ranker (SID / item-ID embeddings).")
    rank_sub = rank.add_subparsers(dest="rank_command", required=True)

    def add_rank(name: str, fn, help_: str) -> argparse.ArgumentParser:
        rp = rank_sub.add_parser(name, help=help_, description=help_)
        rp.add_argument("--config", help="YAML file overriding the defaults (see `mmq config`)")
        rp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        rp.set_defaults(fn=fn)
        return rp

    sp = add_rank("train", _rank_train, "Train the ranker on a dataset's training split (--ranker.representation "
                                        "id, sid, sid_prefix, id+sid or id+sid_prefix).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--tokenizer-dir", required=True, help="output of `mmq tokenize` for this dataset")
    sp.add_argument("--output", help="run directory (default: OUTPUT_DIR/ranker); rerun to resume")
    sp.add_argument("--finetune", action="store_true",
                    help="MMQ stage 2: train the MMQ (or RQ-KMeans) tokenizer with the ranker's loss "
                         "(finetune.* settings; representation sid or id+sid); the fine-tuned tokenizer goes to "
                         "OUTPUT/best/tokenizer")
    overwrite(sp)
    device(sp)

    sp = add_rank("evaluate", _rank_evaluate, "Evaluate a trained ranker: over the whole catalogue, or re-ranking a "
                                              "generator's candidates (--model).")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--ranker", required=True, help="ranker directory (e.g. RUN/best)")
    sp.add_argument("--model", help="generator directory: re-rank its beam-search candidates (generate -> rank)")
    sp.add_argument("--candidates", type=_positive_int, help="generator candidates to re-rank (default: the first "
                                                              "of ranker.candidates)")
    sp.add_argument("--exclude-history", action="store_true", help="never recommend an item the user already has")
    device(sp)
    sp.add_argument("--split", choices=("test", "valid"), default="test")
    sp.add_argument("--report", help="write REPORT.md and REPORT.json")

    sp = add_rank("calibrate", _rank_calibrate, "Choose a ranker's popularity correction T (scores lowered by "
                  "T log(1 + training count) at ranking time) on validation: the largest T whose overall accuracy "
                  "keeps a floor; writes a copy of the ranker with T set.")
    sp.add_argument("--dataset", help="prepared dataset directory")
    sp.add_argument("--ranker", required=True, help="ranker directory (e.g. RUN/best)")
    sp.add_argument("--output", required=True, help="new directory for the calibrated ranker")
    floor = sp.add_mutually_exclusive_group(required=True)
    floor.add_argument("--reference", help="ranker directory whose validation accuracy is the floor (e.g. the "
                                           "item-ID ranker's RUN/best)")
    floor.add_argument("--floor", type=float, help="the floor, a validation value of --metric")
    floor.add_argument("--max-drop", type=float, help="the floor is the ranker's own value at T = 0 less this share "
                                                      "(e.g. 0.02)")
    sp.add_argument("--metric", default="recall@10", help="recall@K or ndcg@K (default: recall@10)")
    sp.add_argument("--grid", type=float, nargs="+", help="corrections T to try (default: 0 to 1, "
                                                          "see mmq_rec.ranker.rank.CORRECTION_GRID)")
    overwrite(sp)
    device(sp)

    sp = add("recommend", _recommend, "Recommend items for a history (or a file of users) with a trained generator, "
                                      "a ranker, or both (generate -> rank).")
    sp.add_argument("--model", help="generator directory")
    sp.add_argument("--ranker", help="ranker directory (with --model: re-rank the generator's candidates)")
    device(sp)
    sp.add_argument("--history", nargs="*", metavar="ITEM", help="item ids, oldest first")
    sp.add_argument("--user", help="the user's id (needed by a generator trained with hashed user tokens)")
    sp.add_argument("--users-file", help="JSON lines {\"user_id\": ..., \"history\": [item ids]}")
    sp.add_argument("--k", type=_positive_int, default=10, help="recommendations per user (>= 1)")

    sp = add("benchmark", _benchmark, "Run the pipeline for every tokenizer in benchmark.tokenizers over "
                                      "benchmark.seeds, plus the item-ID ranker and popularity, and write "
                                      "report.md, report.json and report.html (stages cached; rerun to resume).")
    sp.add_argument("--dataset", help="prepared dataset directory (or set benchmark.source in the config)")
    sp.add_argument("--output", help="benchmark directory (default: config output_dir)")
    overwrite(sp)
    device(sp)

    sp = add("report", _report, "Compose one report (Markdown, JSON, HTML) from earlier benchmark directories and "
                                "--report JSON files of evaluate / rank evaluate / baseline.")
    sp.add_argument("runs", nargs="+", help="benchmark output directories or report JSON files")
    sp.add_argument("--output", required=True, help="directory for report.md, report.json, report.html")
    sp.add_argument("--title", default="MMQ-Rec report")
    overwrite(sp)

    sp = add("demo", _demo, "Run every stage on a built-in synthetic catalogue (offline, a few minutes on CPU).")
    sp.add_argument("--output", help="output directory (default: config output_dir, runs/demo)")
    overwrite(sp)
    device(sp)

    add("config", _config, "Print the resolved configuration with its documentation.")
    return p


def _command(args: argparse.Namespace) -> str:
    return f"{args.command} {args.rank_command}" if args.command == "rank" else args.command


def main(argv: list[str] | None = None) -> int:
    from mmq_rec.config import load_config

    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.command_line = "mmq " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.config, rest, preset="demo" if args.command == "demo" else None,
                          flags=_flag_overrides(args))
        result = args.fn(args, cfg)
    except DataError as e:
        print(f"mmq {_command(args)}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, ...: name the file, no traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"mmq {_command(args)}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmq {_command(args)}: interrupted (a training run resumes when rerun with the same command)",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=None, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
