"""What the start-up store-loss check costs: reading a large audit log for its key creations.

Writes a file-sink log of ``--records`` records (1 % of them ``key.create``, the rest encrypt
records) into a temporary directory, then times ``integrity.logscan.created_keys`` over it with
the segments in the page cache (warm) and after dropping them from it (cold, via
posix_fadvise DONTNEED on those files only).

    python bench/bench_startup_scan.py --records 1000000

Measured on the 2-core development machine (1M records, 656 MB, 10,000 creations): warm
0.24-0.44 s, cold 1.1-1.2 s; looking the 10,000 ids up in a filesystem or SQLite key store adds
about 0.25 s. The scan grows linearly with the log. It also times start-up's change reader
(integrity/changelog.py), which walks the whole chain (seq, link, hash of every record).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from ferrohsm.audit.chain import GENESIS_HASH, AuditEvent, PreparedEvent, prepare, seal_prepared
from ferrohsm.audit.offline import chained_lines, expand_paths
from ferrohsm.audit.segments import segment_name
from ferrohsm.integrity.changelog import read_changes
from ferrohsm.integrity.logscan import AuditLocation, created_keys

SEGMENT_BYTES = 64 << 20


def write_log(directory: Path, count: int) -> int:
    """``count`` sealed records in 64 MiB segments; returns how many were key creations."""
    key, prev, now = b"k" * 32, GENESIS_HASH, datetime.now(UTC)
    encrypt = prepare(AuditEvent(actor="svc", role="service", action="crypto.encrypt",
                                 outcome="success", message="encrypted 1 bytes",
                                 key_id=str(uuid.uuid4()), key_version=1, request_id="r" * 26,
                                 source_ip="127.0.0.1"))
    created, number, size = 0, 1, 0
    out = open(directory / segment_name(number), "wb")  # rotated in the loop
    try:
        for seq in range(1, count + 1):
            if size > SEGMENT_BYTES:
                out.close()
                number, size = number + 1, 0
                out = open(directory / segment_name(number), "wb")
            event: PreparedEvent = encrypt
            if seq % 100 == 0:
                created += 1
                event = prepare(AuditEvent(actor="admin", role="administrator",
                                           action="key.create", outcome="success",
                                           message="created key", key_id=str(uuid.uuid4())))
            record, line = seal_prepared(event, seq=seq, prev_hash=prev, ts=now,
                                         record_id=str(uuid.uuid4()), hmac_key=key)
            prev = record["hash"]
            out.write(line + b"\n")
            size += len(line) + 1
    finally:
        out.close()
    return created


def drop_cache(directory: Path) -> None:
    for path in directory.glob("audit-*.jsonl"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_scan(location: AuditLocation) -> tuple[int, float]:
    start = time.perf_counter()
    found = created_keys(location)
    return len(found), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        created = write_log(directory, args.records)
        size = sum(p.stat().st_size for p in directory.glob("audit-*.jsonl"))
        location = AuditLocation(str(directory))
        os.sync()
        drop_cache(directory)
        found, cold = timed_scan(location)
        assert found == created, (found, created)
        _, warm = timed_scan(location)
        print(f"{args.records:,} records ({size / 1e6:.0f} MB, {created:,} key creations): "
              f"cold {cold:.2f} s, warm {warm:.2f} s")
        start = time.perf_counter()  # the change reader, with its walk along the whole chain
        read_changes(chained_lines(expand_paths([str(directory)])), b"k" * 32, args.records)
        walked = time.perf_counter() - start
        print(f"start-up's change reader with the chain walk (warm): {walked:.2f} s, "
              f"{walked / args.records * 1e6:.1f} µs a record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
