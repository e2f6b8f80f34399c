"""Job handlers: the deterministic CV scorer, a simulated LLM for load and chaos, and sample jobs."""
