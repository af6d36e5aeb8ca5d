"""Trainer-tier fixtures: tiny models/tokenizers (tests/support/tiny_models.py), shared by every
trainer test module. The S3 fixtures come from tests/support/s3.py through the root conftest."""

from __future__ import annotations

from tests.support.tiny_models import tiny_llama_dir, tiny_tokenizer_dir

__all__ = ["tiny_llama_dir", "tiny_tokenizer_dir"]
