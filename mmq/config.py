"""One configuration system: typed dataclasses with documented defaults, YAML files that override
them, and `--section.key value` command-line overrides on top.

Each value is defined once: stage settings are the stages' own dataclasses
(`TextEncoderConfig`, `BucketConfig`, ...), composed here. `mmq config` prints the resolved
configuration with every field's documentation."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from eval.buckets import BucketConfig
from generator.model import GeneratorConfig
from generator.train import TrainConfig
from recdata.errors import DataError
from recdata.synthetic import SyntheticConfig
from tokenizer.baselines import ExternalConfig, RandomConfig, RQKMeansConfig, RQVAEConfig
from tokenizer.encoders import (
    AttributeEncoderConfig,
    CollaborativeConfig,
    ImageEncoderConfig,
    TextEncoderConfig,
)
from tokenizer.mmq import MMQConfig

MODALITIES = ("text", "attributes", "image", "collaborative")


@dataclass
class DataConfig:
    dataset: str = ""
    """A prepared dataset directory (`mmq prepare` writes one)."""
    max_history: int = 20
    """Items of history before each target (TIGER/P5 protocol: 20)."""


@dataclass
class EncodeConfig:
    modalities: list[str] = field(default_factory=lambda: ["text", "attributes"])
    """Modalities to build: text, attributes, image, collaborative, or the name of a
    precomputed feature matrix stored with the dataset (e.g. `image` for TikTok)."""
    cache_dir: str = "~/.cache/mmq-rec/embeddings"
    """Where modality matrices are cached, keyed by content + encoder hash ('' disables)."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    attributes: AttributeEncoderConfig = field(default_factory=AttributeEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)


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


@dataclass
class DecodeConfig:
    beam_width: int = 20
    """Beams of the constrained beam search (>= the largest K evaluated)."""
    batch_size: int = 256
    """Users decoded together."""
    valid_users: int = 2000
    """Validation users decoded at each evaluation during training (a fixed random sample; 0 = all)."""


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Cut-offs for Recall@K / NDCG@K."""
    buckets: BucketConfig = field(default_factory=BucketConfig)
    cold_start_fraction: float = 0.0
    """If > 0, hold this share of items out of training entirely (cold-start split)."""


@dataclass
class DemoConfig:
    """Sizes for `mmq demo` (small, so the whole pipeline runs in a few minutes on 2 CPU cores)."""

    codebook_size: int = 32
    """MMQ codebook size on the synthetic catalogue."""
    tokenizer_epochs: int = 60
    input_mode: str = "item"
    """Generator input mode for the demo (item: one position per history item, fast on CPU)."""
    d_model: int = 64
    layers: int = 2
    """Encoder and decoder layers of the demo generator."""
    train_steps: int = 1500
    eval_every: int = 500
    batch_size: int = 128


@dataclass
class Config:
    seed: int = 0
    """Seed for every random choice (same seed + same data -> same results on CPU)."""
    output_dir: str = "runs/latest"
    """Where a command writes its artefacts and reports."""
    data: DataConfig = field(default_factory=DataConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


# --------------------------------------------------------------------------- overrides
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        for a in args:
            if a is not type(None):
                return _coerce(value, a, key)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0] if args else str, key) for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DataError(f"expected a mapping of {tp.__name__} fields, got {value!r}", field=key)
        return _update(tp(), value, key)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        raise DataError(f"expected {getattr(tp, '__name__', tp)}, got {value!r}", field=key) from None


def _update(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
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
    if hasattr(obj, "__post_init__"):
        try:
            obj.__post_init__()
        except ValueError as e:
            raise DataError(str(e), field=prefix or None) from None
    return obj


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--a.b value` / `--a.b=value` pairs -> nested dict. Values are read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise DataError(f"unexpected argument {arg!r} (configuration overrides look like --section.key value)")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise DataError(f"override {arg} needs a value")
            key, value = arg[2:], args[i + 1]
            i += 2
        node = out
        parts = key.replace("-", "_").split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_scalar(value)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults <- YAML file <- overrides."""
    cfg = Config()
    if path:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise DataError("config file not found", path=path) from None
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
    if overrides:
        _update(cfg, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    return cfg


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


def to_yaml(cfg: Any, indent: int = 0) -> str:
    """YAML of the configuration with each field's documentation as a comment."""
    docs = field_docs(type(cfg))
    lines = []
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.append(to_yaml(value, indent + 1))
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=None, width=10_000).strip()
            lines.append(pad + dumped)
    return "\n".join(lines)
