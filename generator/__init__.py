"""Stage 2: SID vocabulary, seq2seq model, accelerate training, prefix trie, constrained beam search."""
