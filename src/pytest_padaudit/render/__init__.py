"""Reports as text, JSON and Markdown, and reproduction snippets; no pytest here."""
