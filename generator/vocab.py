"""SID vocabulary: one token per (SID position, code), plus <pad> (also the decoder start) and </s>,
and optionally TIGER's hashed user tokens.

Token ids: 0 <pad>, 1 </s>, 2 <unk>, then position 0's codes, position 1's codes, ..., then the
user tokens `<u0>`..`<u{n-1}>` (a user id is hashed to one of them with `user_bucket`). A
Hugging Face fast tokenizer over this vocabulary round-trips readable strings such as
`<s0_12><s1_201><s2_7><s3_0>`, saves with `save_pretrained` and reloads with `AutoTokenizer`.
`SIDVocab.text_tokenizer` extends it with a sentencepiece subword vocabulary learnt from item text,
for models that mix text and SIDs."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

PAD, EOS, UNK = 0, 1, 2
SPECIAL = ["<pad>", "</s>", "<unk>"]


def user_bucket(user_id: str, buckets: int) -> int:
    """A user id's hash bucket: stable across processes and machines (Python's `hash` is not)."""
    digest = hashlib.blake2b(str(user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


@dataclass
class SIDVocab:
    codebook_sizes: list[int]
    user_buckets: int = 0
    """Hashed user tokens (TIGER); 0 = none."""

    @property
    def offsets(self) -> np.ndarray:
        return len(SPECIAL) + np.r_[0, np.cumsum(self.codebook_sizes)[:-1]].astype(np.int64)

    @property
    def size(self) -> int:
        return len(SPECIAL) + int(sum(self.codebook_sizes)) + self.user_buckets

    def user_tokens(self, user_ids: Sequence[str]) -> np.ndarray:
        """Token ids of the users' hashed `<u..>` tokens."""
        if not self.user_buckets:
            raise ValueError("this vocabulary has no user tokens (user_buckets is 0)")
        first = len(SPECIAL) + int(sum(self.codebook_sizes))
        return np.array([first + user_bucket(u, self.user_buckets) for u in user_ids], dtype=np.int64)

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
        return (SPECIAL + [f"<s{p}_{c}>" for p, k in enumerate(self.codebook_sizes) for c in range(k)]
                + [f"<u{b}>" for b in range(self.user_buckets)])

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

    def text_tokenizer(self, texts: Iterable[str], text_vocab_size: int = 8000):
        """A `PreTrainedTokenizerFast` for text mixed with SID tokens, for models that read or write
        both (prompts such as `bought <s0_12><s1_201><s2_7> Great Lash Mascara`).

        sentencepiece learns a unigram subword vocabulary of about `text_vocab_size` pieces (at least
        the 256 fallback bytes and every character seen) from `texts` (e.g. item titles), with byte
        fallback so any text round-trips; every SID token is an added token that is never split.
        Ids 0..`size`-1 are this vocabulary's, unchanged (the same SID token has the same id as in
        `hf_tokenizer`), the text pieces follow. Training is single-threaded and deterministic: the
        same texts give the same tokenizer."""
        import sentencepiece as spm
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        texts = [t for t in texts if t and t.strip()]
        if not texts:
            raise ValueError("text_tokenizer needs at least one non-empty text")
        model = io.BytesIO()
        # byte fallback needs 256 byte pieces besides one piece per character seen
        floor = len(SPECIAL) + 256 + len(set("".join(texts))) + 1
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=max(text_vocab_size, floor), model_type="unigram",
            pad_id=PAD, eos_id=EOS, unk_id=UNK, bos_id=-1, byte_fallback=True, hard_vocab_limit=False,
            normalization_rule_name="identity", shuffle_input_sentence=False, num_threads=1,
            minloglevel=2)
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        pieces = [(t, 0.0) for t in self.token_strings()]
        pieces += [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())
                   if not (sp.is_control(i) or sp.is_unknown(i))]
        tok = Tokenizer(models.Unigram(pieces, unk_id=UNK, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="\u2581",
                                                                                      prepend_scheme="always")])
        tok.add_tokens([AddedToken(t, normalized=False) for t in self.token_strings()[len(SPECIAL):]])
        tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                       model_input_names=["input_ids", "attention_mask"])
