"""Executes plans: batches, gates, retries and timeouts, checks, the journal, locks, signals."""
