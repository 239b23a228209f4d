"""One configuration system: typed dataclasses with documented defaults, YAML files that override
them, and `--section.key value` command-line overrides on top.

Each value is defined once: stage settings are the stages' own dataclasses
(`TextEncoderConfig`, `BucketConfig`, ...), composed here. `mmq config` prints the resolved
configuration with every field's documentation.

Settings mean what they say: every value is checked when the configuration is built (defaults
included), so `mmq config` refuses what a run would refuse. Each config dataclass checks its own
fields in `__post_init__`, raising `ValueError("<field>: <reason>")` (the stages cannot import
this module, so the field's name travels in the message); `load_config` reports it as a DataError
naming the full dotted key, e.g. `field 'train.lr': must be > 0 (got -1.0)`. Checks that span
sections are in `Config.__post_init__`."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmq_rec.eval.buckets import BucketConfig
from mmq_rec.generator.model import GeneratorConfig
from mmq_rec.generator.recommend import DTYPES
from mmq_rec.generator.train import TrainConfig
from mmq_rec.ranker.model import RankerConfig
from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.loaders import FORMATS
from mmq_rec.recdata.synthetic import SyntheticConfig
from mmq_rec.tokenizer.api import TOKENIZERS
from mmq_rec.tokenizer.baselines import ExternalConfig, RandomConfig, RQKMeansConfig, RQVAEConfig
from mmq_rec.tokenizer.encoders import (
    AttributeEncoderConfig,
    CollaborativeConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
)
from mmq_rec.tokenizer.finetune import FinetuneConfig
from mmq_rec.tokenizer.mmq import MMQConfig
from mmq_rec.tokenizer.training import resolve_device

MODALITIES = ("text", "attributes", "image", "collaborative")



def _at_least(cfg: Any, low: int, *names: str) -> None:
    """Each named field must be >= low (`not >=` also refuses NaN)."""
    for name in names:
        if not getattr(cfg, name) >= low:
            raise ValueError(f"{name}: must be >= {low} (got {getattr(cfg, name)!r})")


@dataclass
class DataConfig:
    dataset: str = ""
    """A prepared dataset directory (`mmq prepare` writes one)."""
    max_history: int = 20
    """Items of history before each target (TIGER/P5 protocol: 20)."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_history")


@dataclass
class EncodeConfig:
    modalities: list[str] = field(default_factory=lambda: ["text", "attributes"])
    """Modalities to build: text, attributes, image, collaborative, or the name of a
    precomputed feature matrix stored with the dataset (e.g. `image` for TikTok)."""
    cache_dir: str | None = "~/.cache/mmq-rec/embeddings"
    """Where modality matrices are cached, keyed by content + encoder hash + encoder version
    (null or '' disables caching)."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    attributes: AttributeEncoderConfig = field(default_factory=AttributeEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)

    def __post_init__(self) -> None:
        # stored feature names are only known with the dataset, so any non-empty name is accepted here
        if not self.modalities or not all(self.modalities):
            raise ValueError(f"modalities: must list at least one non-empty name (got {self.modalities!r})")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities: names must not repeat (got {self.modalities!r})")


@dataclass
class TokenizeConfig:
    tokenizer: str = "mmq"
    """Which item tokenizer: mmq, rqvae, rqkmeans, random or external. Each one's `seed` is set
    from the top-level `seed`."""
    mmq: MMQConfig = field(default_factory=MMQConfig)
    rqvae: RQVAEConfig = field(default_factory=RQVAEConfig)
    rqkmeans: RQKMeansConfig = field(default_factory=RQKMeansConfig)
    random: RandomConfig = field(default_factory=RandomConfig)
    external: ExternalConfig = field(default_factory=ExternalConfig)

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer: must be one of {', '.join(TOKENIZERS)} (got {self.tokenizer!r})")


@dataclass
class DecodeConfig:
    beam_width: int = 20
    """Beams of the constrained beam search (>= the largest K evaluated)."""
    batch_size: int = 256
    """Users decoded together."""
    valid_users: int = 2000
    """Validation users decoded at each evaluation during training (a fixed random sample; 0 = all)."""
    dtype: str = "float32"
    """Weights' dtype when evaluating and recommending: float32, or bfloat16 (faster on GPUs; scores
    differ in the last digits, so near-ties may swap). Validation during training decodes in float32."""

    def __post_init__(self) -> None:
        _at_least(self, 1, "beam_width", "batch_size")
        _at_least(self, 0, "valid_users")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(DTYPES)} (got {self.dtype!r})")


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Cut-offs for Recall@K / NDCG@K."""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    cold_start_fraction: float = 0.0
    """If > 0, hold this share of items out of training entirely (cold-start split)."""

    def __post_init__(self) -> None:
        if not self.ks or not all(k >= 1 for k in self.ks):
            raise ValueError(f"ks: must list cut-offs >= 1 (got {self.ks!r})")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks: cut-offs must not repeat (got {self.ks!r})")
        if not 0.0 <= self.cold_start_fraction < 1.0:
            raise ValueError(f"cold_start_fraction: must be in [0, 1) (got {self.cold_start_fraction!r})")


STAGE2 = "mmq_stage2"
"""The benchmark's name for the MMQ tokenization after stage 2 (fine-tuned with the generator)."""


@dataclass
class BenchmarkConfig:
    tokenizers: list[str] = field(default_factory=lambda: ["mmq", "rqkmeans", "rqvae", "random"])
    """Item tokenizations compared by `mmq benchmark` (each with the same generator and ranker settings);
    `external` uses tokenize.external.path (e.g. LETTER's SIDs); `mmq_stage2`: the MMQ tokenizer
    (tokenize.mmq) fine-tuned by MMQ stage 2 with the generator's loss (finetune.*; the generator
    row is that run, the ranker trains on the SIDs it leaves)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds of every trained system (mean ± std over them)."""
    generator: bool = True
    """Train and evaluate the generator for each tokenization."""
    ranker: bool = True
    """Train the ranker (ranker.representation) for each tokenization, and the item-ID ranker (SASRec) once."""
    generate_rank: bool = True
    """Evaluate generate -> rank (the generator's top ranker.candidates[0] re-ranked), when both are trained."""
    source: str = ""
    """A raw dataset to prepare into OUTPUT/data when data.dataset is empty (with source_format)."""
    source_format: str = "jsonl"

    def __post_init__(self) -> None:
        unknown = [t for t in self.tokenizers if t not in (*TOKENIZERS, STAGE2)]
        if not self.tokenizers or unknown or len(set(self.tokenizers)) != len(self.tokenizers):
            raise ValueError(f"tokenizers: must list distinct tokenizers from {', '.join((*TOKENIZERS, STAGE2))} "
                             f"(got {self.tokenizers!r})")
        if self.source_format not in FORMATS:
            raise ValueError(f"source_format: must be one of {', '.join(FORMATS)} (got {self.source_format!r})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or not all(0 <= s < 2**32 for s in self.seeds):
            raise ValueError(f"seeds: must list distinct seeds in [0, 2**32) (got {self.seeds!r})")


@dataclass
class Config:
    seed: int = 0
    """Seed for every random choice (same seed + same data -> same results on CPU)."""
    output_dir: str = "runs/latest"
    """Where a command writes its artefacts and reports."""
    device: str | None = None
    """Where tokenizer training, generator training and decoding run: cpu, cuda or cuda:N (null: CUDA
    when available, else the CPU); also the modality encoders' device unless encode.*.device is set.
    Under `accelerate launch` each process uses its own GPU."""
    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        """Checks that span sections (each section has checked its own fields already)."""
        if not 0 <= self.seed < 2**32:  # numpy's seeding range
            raise ValueError(f"seed: must be in [0, 2**32) (got {self.seed!r})")
        if not self.output_dir:
            raise ValueError("output_dir: must not be empty")
        if self.device is not None:  # "device: ..." for a bad name or a GPU this machine lacks; "CUDA" -> "cuda"
            self.device = str(resolve_device(self.device))
        ks = self.eval.ks
        # the validator reports recall@K / ndcg@K for K in eval.ks only
        for key, metric in (("train.metric", self.train.metric), ("ranker.metric", self.ranker.metric)):
            if int(metric.partition("@")[2]) not in ks:
                raise ValueError(f"{key}: its K must be one of eval.ks {ks} (got {metric!r})")
        if min(self.ranker.candidates) < max(ks):
            raise ValueError(f"ranker.candidates: each must be >= max(eval.ks) = {max(ks)} "
                             f"(got {self.ranker.candidates!r})")
        try:
            self.tokenize.mmq.check_token_order(self.encode.modalities)
        except ValueError as e:
            raise ValueError(f"tokenize.mmq.{e}; encode.modalities: {self.encode.modalities}") from None
        if "external" in self.benchmark.tokenizers and not self.tokenize.external.path:
            raise ValueError("tokenize.external.path: benchmark.tokenizers lists external, which needs a SID table")
        if STAGE2 in self.benchmark.tokenizers and not (self.benchmark.generator and self.generator.input_mode == "item"
                                                        and self.generator.all_positions):
            raise ValueError(f"benchmark.tokenizers: {STAGE2} fine-tunes MMQ with the generator, which needs "
                             "benchmark.generator true and generator.input_mode item with the all-position objective")
        # top-max(ks) needs that many beams (the search would silently widen a narrower beam)
        if self.decode.beam_width < max(ks):
            raise ValueError(f"decode.beam_width: must be >= max(eval.ks) = {max(ks)} "
                             f"(got {self.decode.beam_width!r})")


# Settings that always follow another one: the stages read their own config (the tokenizer's and
# trainer's seed, the synthetic catalogue's seed, the generator's history length), and one value
# at the top decides them all. load_config copies the source into them, so `mmq config` shows the
# value a run uses, and refuses an explicit different value instead of silently replacing it.
DERIVED = {
    "train.seed": "seed",
    "synthetic.seed": "seed",
    "tokenize.mmq.seed": "seed",
    "tokenize.rqvae.seed": "seed",
    "tokenize.rqkmeans.seed": "seed",
    "tokenize.random.seed": "seed",
    "encode.attributes.seed": "seed",
    "encode.collaborative.seed": "seed",
    "ranker.seed": "seed",
    "generator.max_history": "data.max_history",
    "ranker.max_history": "data.max_history",
}


# --------------------------------------------------------------------------- overrides
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return "a list" if typing.get_origin(tp) in (list, tuple) else getattr(tp, "__name__", str(tp))


def _means_none(value: Any) -> bool:
    """None, and the spellings of "no value" on a command line or in YAML ('', null, ~, none)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null", "~"))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # only `X | None` occurs in the configs
        if _means_none(value) and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if value is None:  # never str(None) == "None": a setting without a None value must be given one
        hint = " (write [] for an empty list)" if origin in (list, tuple) else ""
        raise DataError(f"expected {_type_name(tp)}, got null{hint}", field=key)
    if origin in (list, tuple):
        if isinstance(value, str):  # "5,10" (and '' for an empty list)
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):  # one value for a list setting: a one-element list
            value = [value]
        return [_coerce(v, args[0] if args else str, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DataError(f"expected a mapping of {tp.__name__} fields, got {value!r}", field=key)
        return _update(tp(), value, key)
    # a list or mapping is never silently turned into its string form, nor a boolean into 0/1
    if isinstance(value, (list, tuple, dict)) or (isinstance(value, bool) and tp is not bool):
        raise DataError(f"expected {_type_name(tp)}, got {value!r}", field=key)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if tp is str and isinstance(value, (_IntText, _FloatText)):
            return value.text
        return tp(value)
    except (TypeError, ValueError):
        raise DataError(f"expected {_type_name(tp)}, got {value!r}", field=key) from None


def _update(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set `values` (a nested dict) on the dataclass `obj`, converting each to its field's type.
    Values are checked by `validate` once every layer (preset, file, overrides) is applied, since
    a check may involve a field that a later layer sets."""
    hints = _hints(type(obj))
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in hints:
            valid = ", ".join(sorted(hints))
            raise DataError(f"unknown configuration key (valid here: {valid})", field=key)
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current) and isinstance(v, dict):
            _update(current, v, key)
        else:
            setattr(obj, k, _coerce(v, hints[k], key))
    return obj


_FIELD_REASON = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*): (.+)", re.DOTALL)


def validate(obj: Any, prefix: str = "") -> None:
    """Run every dataclass's `__post_init__` checks, innermost first (so cross-field checks see
    valid parts); a failure becomes a DataError naming the full dotted key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}.{f.name}" if prefix else f.name)
    check = getattr(obj, "__post_init__", None)
    if check is None:
        return
    try:
        check()
    except DataError:
        raise
    except ValueError as e:
        # the convention is "<field>: <reason>", the field (possibly dotted) one of obj's
        m = _FIELD_REASON.fullmatch(str(e))
        if m and m.group(1).split(".")[0] in {f.name for f in dataclasses.fields(obj)}:
            raise DataError(m.group(2), field=f"{prefix}.{m.group(1)}" if prefix else m.group(1)) from None
        raise DataError(str(e), field=prefix or None) from None


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj: Any, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    setattr(_get(obj, ".".join(parents)) if parents else obj, last, value)


def _apply_derived(cfg: Config, explicit: set[str]) -> None:
    for target, source in DERIVED.items():
        value, given = _get(cfg, source), _get(cfg, target)
        if target in explicit and given != value:
            raise DataError(f"is always set from '{source}' ({value!r}); set '{source}' instead (got {given!r})",
                            field=target)
        _set(cfg, target, value)


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of the settings a nested dict gives."""
    out: set[str] = set()
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _leaf_keys(v, key) if isinstance(v, dict) and v else {key}
    return out


class _IntText(int):
    """A command-line number that remembers how it was typed (a text setting keeps "0123")."""

    text: str


class _FloatText(float):
    text: str


def _parse_scalar(text: str) -> Any:
    """A command-line value read as YAML ("5" -> 5, "[5, 10]" -> [5, 10], "null" -> None). '' stays
    '' (the setting's type decides: None when optional, [] for a list), and only true/false are
    booleans (YAML 1.1 would also turn yes/no/on/off into them, e.g. a field named `no`). A number
    keeps its text, which a text setting takes as typed ("0123", "1.50")."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (_IntText if isinstance(value, int) else _FloatText)(value)
        value.text = text
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--a.b value`, `--a.b=value` and `--a.b v1 v2 ...` -> nested dict. Several values (all the
    arguments up to the next `--key`) form a list; each value is read by `_parse_scalar`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise DataError(f"unexpected argument {arg!r} (configuration overrides look like --section.key value)")
        j = i + 1
        while j < len(args) and not args[j].startswith("--"):
            j += 1
        if "=" in arg:
            key, first = arg[2:].split("=", 1)
            texts = [first, *args[i + 1:j]]
        else:
            key, texts = arg[2:], args[i + 1:j]
            if not texts:
                raise DataError(f"override {arg} needs a value")
        i = j
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DataError(f"override --{key} conflicts with an earlier value for --{p}")
        values = [_parse_scalar(t) for t in texts]
        node[parts[-1]] = values[0] if len(values) == 1 else values
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                preset: str | None = None, flags: dict[str, Any] | None = None) -> Config:
    """Defaults <- preset (a name in mmq_rec.presets) <- YAML file <- overrides (`--a.b v` strings
    or a nested dict) <- flags (a nested dict: the values of command-line shorthands such as
    `--dataset`), then checked as a whole, defaults included: a configuration that loads is one
    the commands accept."""
    cfg = Config()
    explicit: set[str] = set()  # dotted keys given by the preset, the file or the overrides
    from_file: set[str] = set()
    if preset:
        from mmq_rec.presets import PRESETS

        if preset not in PRESETS:
            raise DataError(f"unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})", field="preset")
        _update(cfg, PRESETS[preset])
        explicit |= _leaf_keys(PRESETS[preset])
    if path:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise DataError("config file not found", path=path) from None
        except UnicodeDecodeError:
            raise DataError("not UTF-8 text (save the YAML file as UTF-8)", path=path) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise DataError(f"invalid YAML: {getattr(e, 'problem', e)}", path=path,
                            line=mark.line + 1 if mark else None) from None
        if not isinstance(data, dict):
            raise DataError("expected a mapping at the top level", path=path)
        try:
            _update(cfg, data)
        except DataError as e:
            raise DataError(e.reason, path=path, field=e.field) from None
        from_file = _leaf_keys(data)
        explicit |= from_file
    from_overrides: set[str] = set()
    for values in (parse_overrides(overrides) if isinstance(overrides, list) else overrides, flags):
        if values:
            _update(cfg, values)
            from_overrides |= _leaf_keys(values)
    explicit |= from_overrides
    try:
        _apply_derived(cfg, explicit)
        validate(cfg)
    except DataError as e:
        if path and e.field in from_file and e.field not in from_overrides:  # the file gave the bad value
            raise DataError(e.reason, path=path, field=e.field) from None
        raise
    return cfg


# Options added after runs had been fingerprinted, with the value that reproduces the earlier
# behaviour: at that value they are left out of run and stage fingerprints, so runs and cached
# stages from before the option existed stay valid (any other value is a new configuration).
LATER_OPTIONS: dict[str, dict[str, Any]] = {"generator": {"item_id_embedding": False},
                                             "ranker": {"sid_loss": 0.0, "align_loss": 0.0, "align_tau": 0.1,
                                                        "id_min_count": 0, "popularity_correction": 0.0,
                                                        "logit_adjust": 0.0},
                                             "finetune": {"init_from": ""}}


def fingerprint_view(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A config section's values (from `to_dict`) as fingerprints record them (see LATER_OPTIONS)."""
    later = LATER_OPTIONS.get(section, {})
    return {k: v for k, v in values.items() if not (k in later and v == later[k])}


def updated(cfg: Config, values: dict[str, Any]) -> Config:
    """A checked copy of `cfg` with `values` (a nested dict) set; settings derived from a changed
    one follow it (e.g. every per-stage seed follows `seed`)."""
    new = copy.deepcopy(cfg)
    _update(new, values)
    _apply_derived(new, _leaf_keys(values))
    validate(new)
    return new


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a dataclass."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and \
                isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def to_yaml(cfg: Any, indent: int = 0, prefix: str = "") -> str:
    """YAML of the configuration with each field's documentation as a comment. Settings copied
    from another one (DERIVED) are shown commented out, so the output loads back after any edit."""
    docs = field_docs(type(cfg))
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(to_yaml(value, indent + 1, key))
        else:
            # lists in flow style ([5, 10]); block style for the rest, since flow style would print
            # a scalar as a one-key mapping ({seed: 0}) that does not load back as this file
            flow = None if isinstance(value, (list, tuple)) else False
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=flow, width=10_000).strip()
            if key in DERIVED:
                dumped = f"# {dumped}  (always set from {DERIVED[key]})"
            lines.append(pad + dumped)
    return "\n".join(lines)
