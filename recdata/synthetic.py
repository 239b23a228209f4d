"""A synthetic multimodal catalogue with known structure, for the demo and tests (offline, seconds).

Planted structure:
- every item has a *topic* (shared across modalities), a *text style* (only in the text
  modality) and an *image style* (only in the image modality);
- `text` = topic vector seen through a text projection + text-style vector + noise; `image` =
  the same topic vector through another projection + image-style vector + noise. The topic is
  therefore cross-modal information, the styles modality-specific information;
- item popularity is Zipf-distributed;
- each user has one or two topic interests and a preferred image style; a sequence walks the
  catalogue, picking mostly items of an interest topic, favouring the preferred style and
  popular items. So behaviour depends on shared *and* modality-specific content.

Items carry titles, category paths, brands and prices derived from the latent labels (so the
text and attribute encoders have something real to read), plus the labels themselves in
`latent_topic`, `latent_text_style`, `latent_image_style`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmq_rec.recdata.schema import RecDataset

_NOUNS = ["lipstick", "serum", "shampoo", "mascara", "cleanser", "perfume", "nail polish", "sunscreen",
          "toner", "conditioner", "eyeliner", "face mask", "body lotion", "hair oil", "foundation", "blush",
          "lip balm", "eye cream", "bath salt", "razor", "brush set", "hair spray", "primer", "concealer"]
_ADJECTIVES = ["matte", "glossy", "organic", "vegan", "luxury", "travel-size", "hydrating", "long-lasting",
               "scented", "unscented", "waterproof", "vintage"]


@dataclass
class SyntheticConfig:
    num_items: int = 2000
    num_users: int = 3000
    num_topics: int = 24
    num_text_styles: int = 12
    num_image_styles: int = 12
    dim: int = 64
    """Dimension of each synthetic modality embedding."""
    noise: float = 0.3
    zipf_exponent: float = 1.1
    mean_extra_length: float = 6.0
    """Sequence length is 5 + Geometric(mean this)."""
    topic_stickiness: float = 0.85
    """Chance that the next item comes from one of the user's interest topics."""
    style_preference: float = 4.0
    """Weight multiplier for items in the user's preferred image style."""
    seed: int = 0

    def __post_init__(self) -> None:
        # Errors read "<field>: <reason>"; mmq.config reports them under the full dotted key.
        for name in ("num_items", "num_users", "num_text_styles", "num_image_styles", "dim"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name}: must be >= 1 (got {getattr(self, name)!r})")
        if not self.num_topics >= 2:  # a user draws up to two distinct interest topics
            raise ValueError(f"num_topics: must be >= 2 (got {self.num_topics!r})")
        for name in ("noise", "zipf_exponent", "mean_extra_length", "style_preference"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0 (got {getattr(self, name)!r})")
        if not 0.0 <= self.topic_stickiness <= 1.0:
            raise ValueError(f"topic_stickiness: must be in [0, 1] (got {self.topic_stickiness!r})")


def synthetic_catalogue(config: SyntheticConfig | None = None) -> RecDataset:
    c = config or SyntheticConfig()
    rng = np.random.default_rng(c.seed)
    n = c.num_items
    topic = rng.integers(0, c.num_topics, n)
    tstyle = rng.integers(0, c.num_text_styles, n)
    istyle = rng.integers(0, c.num_image_styles, n)

    topic_vec = rng.standard_normal((c.num_topics, c.dim))
    proj_text, _ = np.linalg.qr(rng.standard_normal((c.dim, c.dim)))
    proj_image, _ = np.linalg.qr(rng.standard_normal((c.dim, c.dim)))
    tstyle_vec = rng.standard_normal((c.num_text_styles, c.dim))
    istyle_vec = rng.standard_normal((c.num_image_styles, c.dim))
    text = topic_vec[topic] @ proj_text + 0.8 * tstyle_vec[tstyle] + c.noise * rng.standard_normal((n, c.dim))
    image = topic_vec[topic] @ proj_image + 0.8 * istyle_vec[istyle] + c.noise * rng.standard_normal((n, c.dim))

    weight = np.empty(n)
    weight[rng.permutation(n)] = 1.0 / np.arange(1, n + 1) ** c.zipf_exponent
    by_topic = [np.flatnonzero(topic == t) for t in range(c.num_topics)]

    sequences = []
    for _ in range(c.num_users):
        interests = rng.choice(c.num_topics, size=rng.integers(1, 3), replace=False)
        pref = rng.integers(0, c.num_image_styles)
        length = 5 + rng.geometric(1.0 / (1.0 + c.mean_extra_length)) - 1
        seq: list[int] = []
        for _ in range(length):
            t = rng.choice(interests) if rng.random() < c.topic_stickiness else rng.integers(0, c.num_topics)
            cand = by_topic[t] if len(by_topic[t]) else np.arange(n)
            w = weight[cand] * np.where(istyle[cand] == pref, c.style_preference, 1.0)
            w = np.where(np.isin(cand, seq[-3:]), 0.0, w)  # no immediate repeats
            if w.sum() == 0:
                w = np.ones(len(cand))
            seq.append(int(rng.choice(cand, p=w / w.sum())))
        sequences.append(seq)

    price = np.round(np.exp(2.0 + 0.15 * topic + 0.3 * rng.standard_normal(n)), 2)
    items = [{
        "item_id": f"syn{i:05d}",
        "title": f"{_ADJECTIVES[tstyle[i] % len(_ADJECTIVES)].capitalize()} "
                 f"{_NOUNS[topic[i] % len(_NOUNS)]} no. {i}",
        "categories": ["Synthetic", f"Department {topic[i] % 6}", f"Topic {topic[i]}"],
        "brand": f"Brand {istyle[i]}",
        "price": float(price[i]),
        "latent_topic": int(topic[i]),
        "latent_text_style": int(tstyle[i]),
        "latent_image_style": int(istyle[i]),
    } for i in range(n)]
    return RecDataset.from_sequences(
        "synthetic", items, [f"user{u:05d}" for u in range(c.num_users)], sequences,
        features={"text": text.astype(np.float32), "image": image.astype(np.float32)},
        meta={"format": "synthetic", "synthetic": True, "generator": dict(c.__dict__)})
