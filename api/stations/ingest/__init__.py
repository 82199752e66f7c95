"""
The ingest pipeline of the station data endpoint: `body` decodes and hardens the signed
bytes, `event_log` keeps one row per delivery and its guarded outcome, and `delivery` runs
a delivery through validation, the message's own writes and the outcome.
"""
