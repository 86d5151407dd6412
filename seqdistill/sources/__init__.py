"""The problem layer: where problems come from, and which samples stay (filters, dedup)."""
