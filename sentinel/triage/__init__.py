"""Evidence -> explanation, shared by the daemon and `sentinel triage`.

``records`` builds fingerprinted fault records, ``fingerprint`` their signatures, ``catalog`` matches
them against known issues (``data/catalog.toml``), ``hangs`` names a collective hang's culprit, and
``readers/`` holds one reader per artifact kind. Never imports torch, nor the daemon.
"""

__all__ = []
