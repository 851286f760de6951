"""What a laptop and a server share to replicate records.

* :mod:`~caresync.replication.pool`: the records a replica keeps loaded (a bounded LRU)
  and their conflict-index rows;
* :mod:`~caresync.replication.index`: keeping the stored conflict index true to the
  rulebook;
* :mod:`~caresync.replication.absorb`: the one path that takes remote updates into
  records and commits them with a checkpoint, used by a laptop's pull, live updates and
  first copy, and by the server's push;
* :mod:`~caresync.replication.parts`: a record larger than one frame, cut into parts a
  first copy takes (the server's cut, the laptop's checks; pure);
* :mod:`~caresync.replication.meta`: every meta key a replica keeps;
* :mod:`~caresync.replication.status`: a laptop's sync state, its one owner and the
  transitions it may take;
* :mod:`~caresync.replication.session`: a laptop's connection to its server, over a
  narrow host interface.

Nothing is imported here, so ``caresync.replication.meta`` costs nothing to load.
"""

__all__: list[str] = []
