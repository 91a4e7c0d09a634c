"""The measuring engine: the GPT-2 model, the synchronising timer, the phases, the runner and the
machine's hardware. torch lives here and only here."""
