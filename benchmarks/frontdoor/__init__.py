"""Helpers of ``benchmarks/bench_frontdoor.py``: a fake OpenAI engine, a lean closed-loop load
generator, the peers' processes and py-spy sampling."""
