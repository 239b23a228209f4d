"""MMQ-Rec application layer: configuration and the `mmq` command line. Stages live in
`tokenizer`, `generator`, `ranker` and `eval`; data loading in `recdata`."""

__version__ = "0.1.0"
