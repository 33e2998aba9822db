"""processors: extraction, OCR, embeddings and summaries as jobs (the Processors issue)."""
