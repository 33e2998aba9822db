"""engine: a full replica's documents, made from events and turned into events.

Nouns: a *document* is a pycrdt ``Doc`` (``meta`` map + ``body`` text) named by a random
16-byte id (``documents``); a *live* document is one held in memory with edits not yet
flushed; a *flush* turns those edits into one ``doc.update`` event (``engine``); a
*snapshot* is a document's full state stored so it opens without replaying its history;
*derived state* (index, listing, snapshots, names) is rebuildable from the log at any time;
*views* read it (listing, history, time travel); a *subscription* follows applied events.
"""
