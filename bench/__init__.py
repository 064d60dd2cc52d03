"""codex_trio benchmarks: ``python -m bench [NAME ...] [--quick] [--out FILE]`` (or ``./dev bench``).

Each benchmark measures codex_trio and its baseline side by side in one run and returns one JSON object (name,
machine, parameters, raw figures, ratios). They are measurements, not tests: nothing here asserts a timing.
Results and how to read them: docs/performance.md.
"""
