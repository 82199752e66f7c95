"""
The sender's side of the station data endpoint, outside the server apps: `wire` (bodies,
signatures, headers, messages), `client` (the reference sender) and `simulator` (a fleet of
simulated cabinets). Standard library only, so it runs without Django.
"""
