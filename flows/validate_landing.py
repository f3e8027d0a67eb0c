"""The validation stage both flows start with: every new landing file, validated and reported."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import TaskRunner

from models.settings import Settings
from tasks.ingest import BatchValidation, ingest_landing, publish_validation, validate_batch, validation_failed


@flow(name="validate-landing")
def validate_landing(settings: Settings) -> list[BatchValidation]:
    validations = []
    for landed in ingest_landing(settings):
        state = validate_batch(landed, settings, return_state=True)
        if not state.is_completed():  # the file stays `received`: the next run validates it again
            validations.append(validation_failed(landed, state.message or state.name))
            continue
        validation = state.result()
        publish_validation(validation, settings)
        validations.append(validation)
    return validations


def validation_task_runner(settings: Settings) -> TaskRunner | None:
    """A Dask task runner when settings ask for partitions (their `check-partition` tasks run on
    it); None otherwise: Prefect's default, in the flow's process."""
    if settings.validation_partitions <= 1:
        return None
    from prefect_dask import DaskTaskRunner  # the `dask` extra: pip install 'freshrec[dask]'

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.validation_partitions, "threads_per_worker": 1, "processes": True})


def validate_new_files(settings: Settings) -> list[BatchValidation]:
    """The validate-landing subflow, on the task runner the settings ask for."""
    runner = validation_task_runner(settings)
    return (validate_landing.with_options(task_runner=runner) if runner else validate_landing)(settings)
