"""Data layer shared by every stage: the item and interaction tables, loaders for the formats the
field uses, atomic file writes, and a synthetic multimodal catalogue for the demo and tests.

Nothing here imports a stage package (`tokenizer`, `generator`, `ranker`, `eval`)."""

from mmq_rec.recdata.errors import DataError
from mmq_rec.recdata.schema import RecDataset

__all__ = ["DataError", "RecDataset"]
