"""A user of the Python client that openapi-python-client generated from the live
/openapi.json (the package `gateway_client`, on PYTHONPATH): register a workflow with the
admin key, submit a job with typed inputs as a user, follow it to `succeeded`, download its
output's bytes and read its webhooks. Only the generated client talks HTTP; mypy --strict
checks this file with the package. Run by tests/it/clients.rs:

    python3 use_client.py BASE_URL ADMIN_KEY USER_KEY CALLBACK_URL WORKFLOW_ID
"""

import sys
import time

from gateway_client import AuthenticatedClient
from gateway_client.api.default import (
    create_job,
    create_workflow,
    get_job,
    get_output,
    get_workflow,
    list_job_webhooks,
)
from gateway_client.models import (
    ErrorResponse,
    Job,
    JobAccepted,
    JobRequestIcon512,
    JobStatus,
    WorkflowDefinition,
    WorkflowDefinitionDefaultsType0,
    WorkflowDefinitionInputSchemaType0,
    WorkflowDefinitionWorkflow,
    WorkflowDetails,
    WorkflowInputsIcon512,
)
from gateway_client.types import File

DEADLINE_S = 60.0
# How often the job and its deliveries are looked at while waiting.
POLL_S = 0.05


def client(base_url: str, key: str) -> AuthenticatedClient:
    # The gateway's keys go in X-API-Key, not in Authorization: Bearer.
    return AuthenticatedClient(base_url=base_url, token=key, auth_header_name="X-API-Key", prefix="")


def register(admin: AuthenticatedClient, workflow_id: str) -> None:
    """POST /workflows: EmptyImage -> SaveImage, its colour an input, its size defaulted."""
    template = WorkflowDefinitionWorkflow.from_dict(
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": "{{size}}", "height": "{{size}}", "batch_size": 1, "color": "{{color}}"},
            },
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "client"}},
        }
    )
    schema = WorkflowDefinitionInputSchemaType0.from_dict(
        {
            "type": "object",
            "properties": {"color": {"type": "integer", "minimum": 0}, "size": {"type": "integer", "default": 16}},
            "required": ["color"],
            "additionalProperties": False,
        }
    )
    definition = WorkflowDefinition(
        id=workflow_id,
        workflow=template,
        input_schema=schema,
        defaults=WorkflowDefinitionDefaultsType0.from_dict({"size": 16}),
        name="Generated-client test",
    )
    created = create_workflow.sync_detailed(client=admin, body=definition)
    assert created.status_code == 201, (created.status_code, created.content)
    assert isinstance(created.parsed, WorkflowDetails), created.parsed
    assert created.parsed.id == workflow_id and created.parsed.version == 1
    read = get_workflow.sync(workflow_id, client=admin)
    assert isinstance(read, WorkflowDetails), read
    assert read.input_schema.to_dict()["required"] == ["color"], read.input_schema


def submit(user: AuthenticatedClient, callback_url: str) -> str:
    """POST /jobs on the bundled icon_512 with its request type (JobRequest.icon_512): the
    workflow id a literal, the inputs typed by the model of its input schema
    (WorkflowInputs.icon_512)."""
    typed = JobRequestIcon512(
        workflow_id="icon_512",
        inputs=WorkflowInputsIcon512(prompt="a lighthouse, flat icon", steps=4, seed=7),
        callback_url=callback_url,
        cache=False,
    )
    accepted = create_job.sync(client=user, body=typed)
    assert isinstance(accepted, JobAccepted), accepted
    assert accepted.status in (JobStatus.QUEUED, JobStatus.RUNNING), accepted.status
    return str(accepted.job_id)


def follow(user: AuthenticatedClient, job_id: str) -> Job:
    """GET /jobs/{id} until the job is finished; it must have succeeded."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        job = get_job.sync(job_id, client=user)
        assert isinstance(job, Job), job
        if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            assert job.status == JobStatus.SUCCEEDED, job.to_dict()
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {DEADLINE_S} s"
        time.sleep(POLL_S)


def download(user: AuthenticatedClient, job: Job) -> bytes:
    """GET /outputs/{id}/{file}: the first output's bytes, a PNG of the size it says."""
    assert job.outputs, job.to_dict()
    output = job.outputs[0]
    answer = get_output.sync(str(job.job_id), output.name, client=user)
    assert isinstance(answer, File), answer
    data = answer.payload.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert len(data) == output.size, (len(data), output.size)
    return data


def webhooks(user: AuthenticatedClient, job_id: str) -> list[str]:
    """GET /jobs/{id}/webhooks until the job.succeeded delivery is delivered."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        listed = list_job_webhooks.sync(job_id, client=user)
        assert listed is not None and not isinstance(listed, ErrorResponse), listed
        assert str(listed.job_id) == job_id
        states = {d.event.value: d.state.value for d in listed.deliveries}
        if states.get("job.succeeded") == "delivered":
            return [d.id for d in listed.deliveries]
        assert time.monotonic() < deadline, f"deliveries of {job_id}: {states}"
        time.sleep(POLL_S)


def main(argv: list[str]) -> None:
    base_url, admin_key, user_key, callback_url, workflow_id = argv
    admin = client(base_url, admin_key)
    user = client(base_url, user_key)
    register(admin, workflow_id)
    job_id = submit(user, callback_url)
    job = follow(user, job_id)
    data = download(user, job)
    ids = webhooks(user, job_id)
    print(f"python client: job {job_id} succeeded, {len(data)} bytes of PNG, webhooks {ids}")


if __name__ == "__main__":
    main(sys.argv[1:])
