"""The path of an event through one request: the body (`payload`), its authenticity and routing
(`ingest`), and the compiled rules it is matched against (`conditions`)."""
