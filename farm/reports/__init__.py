"""Reports over stored results: selection, speedups, formats (terminal, Markdown, CSV, JSON, HTML),
plots, history, environment diffs and imports. Never imports torch."""
