"""Background jobs: start a compaction, follow it."""

from __future__ import annotations

from fastapi import APIRouter

from embedsvc.api.deps import ServiceDep
from embedsvc.api.errors import ApiError, responses
from embedsvc.api.limits import JsonRoute
from embedsvc.responses import Job, JobList

router = APIRouter(tags=["jobs"], route_class=JsonRoute)


@router.post("/v1/collections/{name}/compact", operation_id="compact", response_model=Job,
             status_code=202, responses=responses(400, 404, 409, 503))
def compact(name: str, service: ServiceDep) -> Job:
    """Fold the fresh segment and the deleted vectors into a new index version, in the
    background (the job already queued or running, if there is one)."""
    return service.compact(name)


@router.get("/v1/jobs", operation_id="list_jobs", response_model=JobList)
def list_jobs(service: ServiceDep) -> JobList:
    """The most recent jobs of every collection, newest first."""
    return JobList(jobs=service.jobs())


@router.get("/v1/jobs/{job_id}", operation_id="get_job", response_model=Job, responses=responses(404))
def get_job(job_id: str, service: ServiceDep) -> Job:
    job = service.job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job '{job_id}'; list them at /v1/jobs")
    return job
