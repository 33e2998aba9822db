"""eventlog: the signed, encrypted, hash-chained log, and the rules for accepting events.

Nouns: an *event* is one signed record ``[signed bytes, sig]`` whose id is the BLAKE3-256 of
its signed bytes (``envelope``); a *log* is one author's events, seq 1, 2, 3, each naming the
id of the one before; the *version vector* is how far we hold each log (``store`` heads); the
*roster* is who may write, folded from public membership events (``membership``); an *epoch
key* seals bodies (``sealing``, ``crypto``); *pending* events wait for a predecessor or for
their author's membership; *equivocation* is two signed events at one place. ``accept`` is
the one gate every event passes; ``integrity`` re-checks everything stored.

This package imports nothing else of shoal: a blind relay runs on it alone.
"""
