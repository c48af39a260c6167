"""`qwq serve`: the OpenAI-compatible HTTP front end, as thin over app/ as the CLI is."""
