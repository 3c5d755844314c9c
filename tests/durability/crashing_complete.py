"""Complete an upload but hang mid-concatenation, for a test to SIGKILL: ``python crashing_complete.py
ORG_ID UPLOAD_ID MARKER PART_ID...`` (settings from OPENFT_* env)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from openft.services.context import Services
from openft.settings import Settings
from openft.store.blobs import BlobStore

if __name__ == "__main__":
    organization_id, upload_id, marker, *part_ids = sys.argv[1:]
    read_chunks = BlobStore.read_chunks
    reads = 0

    def hanging_read_chunks(self, key):
        global reads
        reads += 1
        if reads == 2:  # the first part is in the temporary file; block before the second
            Path(marker).write_text("mid-concatenation")
            threading.Event().wait()
        yield from read_chunks(self, key)

    BlobStore.read_chunks = hanging_read_chunks
    services = Services.build(Settings.from_env())
    services.uploads.complete(organization_id, upload_id, part_ids)
