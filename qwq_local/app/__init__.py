"""Services every front end calls (CLI, HTTP server, benchmarks): plan a model, prepare a search, solve, chat."""
