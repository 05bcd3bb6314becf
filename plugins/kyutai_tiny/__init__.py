"""Tiny random-weight Kyutai checkpoints for tests, demos and benches (no real weights needed).

`common` builds the shared pieces (Mimi, tokenizer), `stt` the speech-to-text checkpoint and
`tts` the text-to-speech one; each is written in the real repository layout and loaded back
through moshi's own loader.
"""
