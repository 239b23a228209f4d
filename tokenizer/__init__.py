"""Stage 1: modality encoders -> item tokenizers -> semantic-ID table."""
