"""Import jobs in PostgreSQL, shared by every node of the database.

With the key store in PostgreSQL, a client that fails over to another node between creating an
import job and using it (``FERROHSM_URL`` lists several) must find the job there: the folder
store keeps jobs on one host. The row holds only the sealed blob the service made (the job's
private key sealed under the master key, bound to the job id), as the folder holds it in a file.
"""

from __future__ import annotations

from .importjobs import ImportJobStore, check_job_id
from .pgdb import Conn, PgDatabase
from .pgschema import prepare


class PostgresImportJobStore(ImportJobStore):
    """Sealed import jobs in the ``import_jobs`` table."""

    name = "postgres"

    def __init__(self, db: PgDatabase) -> None:
        self._db = db
        prepare(db)

    def put(self, job_id: str, sealed: bytes) -> None:
        check_job_id(job_id)

        def work(conn: Conn) -> None:
            conn.execute("INSERT INTO import_jobs (job_id, sealed) VALUES (%s, %s) "
                         "ON CONFLICT (job_id) DO UPDATE SET sealed = excluded.sealed",
                         (job_id, sealed))  # as a file put again is replaced
        self._db.run(work, f"could not store import job {job_id}", transaction=False)

    def get(self, job_id: str) -> bytes | None:
        check_job_id(job_id)
        rows = self._db.query("SELECT sealed FROM import_jobs WHERE job_id = %s", (job_id,),
                              f"could not read import job {job_id}")
        return bytes(rows[0][0]) if rows else None

    def delete(self, job_id: str) -> bool:
        check_job_id(job_id)

        def work(conn: Conn) -> bool:
            return bool(conn.execute("DELETE FROM import_jobs WHERE job_id = %s",
                                     (job_id,)).rowcount)
        return bool(self._db.run(work, f"could not delete import job {job_id}",
                                 transaction=False))

    def ids(self) -> list[str]:
        rows = self._db.query("SELECT job_id FROM import_jobs ORDER BY job_id", (),
                              "could not list import jobs")
        return [str(row[0]) for row in rows]
