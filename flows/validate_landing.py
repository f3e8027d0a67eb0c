"""The validation stage both flows start with: every new landing file, validated and reported."""

from __future__ import annotations

from prefect import flow

from flows.settings import Settings
from tasks.ingest import BatchValidation, ingest_landing, publish_validation, validate_batch


@flow(name="validate-landing")
def validate_landing(settings: Settings) -> list[BatchValidation]:
    validations = []
    for landed in ingest_landing(settings):
        validation = validate_batch(landed, settings)
        publish_validation(validation, settings)
        validations.append(validation)
    return validations
