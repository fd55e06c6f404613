"""The rules file: read with marks (`source`), checked field by field (`fields`, `settings`),
built into the model (`model`) by the loader (`loader.load`)."""
