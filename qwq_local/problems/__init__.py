"""Problems and their checking: formats and prompts, data sets, answer checks, the code sandbox."""
