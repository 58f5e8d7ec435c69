"""The engine: decides an audit (options, batches, passes, checks, findings, shrinking).

It knows neither pytest nor any framework: adapters answer it through NumPy arrays.
"""
