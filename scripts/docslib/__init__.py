"""The documentation site's build helpers (see mkdocs.yml and scripts/docs)."""
