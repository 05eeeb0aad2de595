"""Imports of official OBoW checkpoints: the upload becomes the `import` artifact of a new run."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.orm import Session

from server.core import artifacts as artifact_store
from server.core import kinds as kinds_service
from server.core.errors import Invalid, invalid
from server.core.models import Run
from server.core.settings import Settings
from server.services import artifacts as artifacts_service
from server.services import runs as runs_service


async def create_import(
    session: Session,
    chunks: AsyncIterator[bytes],
    name: str,
    settings: Settings,
    enqueue,
    launched_by: str | None = None,
) -> Run:
    if "import" not in kinds_service.kinds():
        raise invalid(("body",), "this installation has no 'import' run kind")
    field = kinds_service.upload_field("import")
    if field is None:
        raise invalid(("body",), "the 'import' spec has no input file field")
    upload = await artifacts_service.save_upload(
        chunks, settings.artifact_root, settings.max_upload_bytes, name
    )

    def store() -> Run:
        try:
            cls = kinds_service.spec_class("import")
            spec = cls.model_validate({field: str(upload)}).model_dump(mode="json")
        except ValidationError as err:
            shutil.rmtree(upload.parent, ignore_errors=True)
            raise Invalid(
                [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in err.errors()]
            ) from None
        run = Run(
            kind="import",
            name=name,
            preset=None,
            spec=spec,
            parent_id=None,
            queue=kinds_service.queue_for("import"),
            launched_by=launched_by,
        )
        session.add(run)
        session.flush()
        artifact_store.record(
            session, settings.artifact_root, run.id, upload, "import", {"format": "upload"}
        )
        return runs_service.add_run_row(session, run, enqueue)

    return await run_in_threadpool(store)
