"""A distributed build's part files: each torchrun rank commits its share into a file of its own
(the catalogue's tables), and rank 0 merges them into the catalogue."""
from __future__ import annotations

from pathlib import Path

from deepret.index.catalogue import Catalogue

PARTS = "parts"


def open_part(index_dir: Path, rank: int) -> Catalogue:
    """Rank `rank`'s part file under index_dir/parts (rollback journal: it may live on a network file system)."""
    return Catalogue(index_dir / PARTS, create=True, name=f"rank-{rank}.sqlite", wal=False)


def merge_parts(cat: Catalogue) -> None:
    """Move every rank's part (also those of an interrupted distributed build) into the catalogue."""
    for part in sorted((cat.dir / PARTS).glob("rank-*.sqlite")):
        cat.db.execute("ATTACH DATABASE ? AS part", (str(part),))
        try:
            with cat.write() as db:  # idempotent: a merge killed before the unlink is simply redone
                db.execute("UPDATE files SET status = p.status, width = p.width, height = p.height, reason = p.reason "
                           "FROM part.files AS p WHERE files.id = p.id")
                db.execute("INSERT OR REPLACE INTO vectors (id, vec, crc) SELECT id, vec, crc FROM part.vectors "
                           "ORDER BY id")  # the checksums made by the rank
        finally:
            cat.db.execute("DETACH DATABASE part")
        part.unlink()


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
