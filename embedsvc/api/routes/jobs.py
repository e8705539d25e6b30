"""Background jobs: start a compaction, follow it."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from embedsvc.api.deps import ServiceDep
from embedsvc.api.errors import ApiError
from embedsvc.api.schemas import ErrorResponse, JobList, JobOut

router = APIRouter(tags=["jobs"], responses={404: {"model": ErrorResponse}})


@router.post("/v1/collections/{name}/compact", operation_id="compact", response_model=JobOut,
             status_code=202)
def compact(name: str, service: ServiceDep) -> JobOut:
    """Fold the fresh segment and the deleted vectors into a new index version, in the
    background (the job already queued or running, if there is one)."""
    return JobOut(**asdict(service.compact(name)))


@router.get("/v1/jobs", operation_id="list_jobs", response_model=JobList)
def list_jobs(service: ServiceDep) -> JobList:
    """The most recent jobs of every collection, newest first."""
    return JobList(jobs=[JobOut(**asdict(job)) for job in service.jobs()])


@router.get("/v1/jobs/{job_id}", operation_id="get_job", response_model=JobOut)
def get_job(job_id: str, service: ServiceDep) -> JobOut:
    job = service.job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job '{job_id}'; list them at /v1/jobs")
    return JobOut(**asdict(job))
