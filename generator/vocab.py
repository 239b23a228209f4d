"""SID vocabulary: one token per (SID position, code), plus <pad> (also the decoder start) and </s>.

Token ids: 0 <pad>, 1 </s>, 2 <unk>, then position 0's codes, position 1's codes, ... A
Hugging Face fast tokenizer over this vocabulary round-trips readable strings such as
`<s0_12><s1_201><s2_7><s3_0>`, saves with `save_pretrained` and reloads with `AutoTokenizer`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

PAD, EOS, UNK = 0, 1, 2
SPECIAL = ["<pad>", "</s>", "<unk>"]


@dataclass
class SIDVocab:
    codebook_sizes: list[int]

    @property
    def offsets(self) -> np.ndarray:
        return len(SPECIAL) + np.r_[0, np.cumsum(self.codebook_sizes)[:-1]].astype(np.int64)

    @property
    def size(self) -> int:
        return len(SPECIAL) + int(sum(self.codebook_sizes))

    @property
    def sid_length(self) -> int:
        return len(self.codebook_sizes)

    def slice(self, position: int) -> tuple[int, int]:
        """[start, end) token ids of a SID position."""
        start = int(self.offsets[position])
        return start, start + int(self.codebook_sizes[position])

    def to_tokens(self, codes: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """(..., L) codes -> (..., L) token ids."""
        if isinstance(codes, torch.Tensor):
            return codes + torch.as_tensor(self.offsets, device=codes.device)
        return np.asarray(codes, dtype=np.int64) + self.offsets

    def token_strings(self) -> list[str]:
        return SPECIAL + [f"<s{p}_{c}>" for p, k in enumerate(self.codebook_sizes) for c in range(k)]

    def hf_tokenizer(self):
        """A `PreTrainedTokenizerFast` for this vocabulary."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        vocab = {t: i for i, t in enumerate(self.token_strings())}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^<>]*>"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                       model_input_names=["input_ids", "attention_mask"])

    def strings(self, codes: Sequence[int]) -> str:
        return "".join(f"<s{p}_{int(c)}>" for p, c in enumerate(codes))
