"""The evaluate stage's library: decoding, error rates, latency, system facts, the evaluation run."""
