"""Revision 0002_around on a database that already holds rows: organization-wide objects made
before projects existed stay visible to their organization (its default project), and nowhere else."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from openft.domain.scope import Scope
from openft.errors import NotFoundError
from openft.services.context import Services
from openft.settings import Settings
from openft.store.db import MIGRATIONS_DIR, Database


def _upgrade(db: Database, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_rows_from_before_projects_belong_to_the_default_project(database_url, tmp_path):
    db = Database(database_url)
    _upgrade(db, "0001")
    with db.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO organizations (id, name, created_at) VALUES ('org-old', 'old', 1)")
        )
        connection.execute(
            text(
                "INSERT INTO files (id, organization_id, filename, purpose, bytes, created_at, status, blob_key)"
                " VALUES ('file-old', 'org-old', 'a.jsonl', 'fine-tune', 3, 1, 'processed', 'file-old')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO fine_tuning_jobs (id, organization_id, created_at, status, model, base_model,"
                " training_file, seed, method_type, hyperparameters, integrations, result_files,"
                " lease_generation, attempts) VALUES ('ftjob-old', 'org-old', 1, 'succeeded', 'm', 'm',"
                " 'file-old', 1, 'supervised', '{}', '[]', '[]', 0, 0)"
            )
        )
    db.dispose()

    services = Services.build(Settings(home=tmp_path / "home", database_url=database_url))
    try:
        assert services.files.get("org-old", "file-old").project_id is None
        assert services.fine_tuning.retrieve(Scope("org-old"), "ftjob-old").status == "succeeded"
        elsewhere = Scope("org-old", services.projects.ensure("org-old", "new").id)
        with pytest.raises(NotFoundError):
            services.files.get(elsewhere, "file-old")
        with pytest.raises(NotFoundError):
            services.fine_tuning.retrieve(elsewhere, "ftjob-old")
    finally:
        services.close()
