"""Test fixture: a module that fails while being imported."""
raise RuntimeError('broken import marker')
