"""Deleting one file's replica from S3-compatible storage (the erasure of an account).

Owns reading a Litestream ``s3://`` replica URL the way Litestream does
(bucket, prefix, ``endpoint``, ``region``, ``forcePathStyle``,
``skipVerify``; ``LITESTREAM_S3_ENDPOINT`` and the credentials as
settings.py reads them for Litestream, else the AWS SDK's usual chain) and
deleting every object, and every version of one,
under the file's prefix. Uses boto3 from the ``replication`` extra, imported
only here and only when an S3 replica is erased: the SDK brings the whole
credential chain (keys, profiles, instance and container roles, web
identity), retries and request signing that operators already rely on for
Litestream itself, which a hand-written signer would only approximate.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ReplicationError
from ..settings import ObjectStoreCredentials
from .urls import redact

_AWS_HOST = re.compile(r"^(.+)\.s3(?:[.-]([^.]+))?\.amazonaws\.com$")
_TRUE = {"1", "true", "yes", "on"}
_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where an ``s3://`` replica lives and how to reach it."""

    bucket: str
    prefix: str
    endpoint: str | None
    region: str | None
    path_style: bool
    verify: bool


def s3_location(url: str, credentials: ObjectStoreCredentials | None = None) -> S3Location:
    """Read a Litestream ``s3://BUCKET/PREFIX?...`` URL (``credentials`` for the endpoint)."""
    store = credentials or ObjectStoreCredentials()
    parts = urllib.parse.urlsplit(url)
    query = {name: values[-1] for name, values in urllib.parse.parse_qs(parts.query).items()}
    host = parts.netloc
    if host.lower().startswith("arn:"):
        raise ReplicationError(
            f"erasing a replica behind an S3 access point ({redact(url)}) is not supported; "
            f"delete its prefix with your storage's own tools."
        )
    bucket, region = host, None
    if matched := _AWS_HOST.match(host):
        bucket, region = matched.group(1), matched.group(2)
    elif "." in host or ":" in host:
        raise ReplicationError(
            f"cannot tell the bucket from the host {host!r} in {redact(url)}; write "
            f"s3://BUCKET/PREFIX?endpoint=https://HOST (the form Litestream also accepts)."
        )
    endpoint = query.get("endpoint") or store.endpoint
    if endpoint is not None and "://" not in endpoint:
        local = endpoint.startswith(("localhost", "127.", "[::1]"))
        endpoint = ("http://" if local else "https://") + endpoint
    region = query.get("region") or region
    path_style = endpoint is not None
    for name in ("forcePathStyle", "force-path-style"):
        if name in query:
            path_style = query[name].lower() in _TRUE
    verify = not any(query.get(name, "").lower() in _TRUE for name in ("skipVerify", "skip-verify"))
    prefix = parts.path.strip("/")
    if not prefix:
        raise ReplicationError(f"{redact(url)} names no prefix; refusing to empty a whole bucket.")
    return S3Location(bucket, prefix, endpoint, region, path_style, verify)


def delete_prefix(url: str, credentials: ObjectStoreCredentials | None = None) -> list[str]:
    """Delete every object (and every stored version) under the replica's prefix.

    Returns what was deleted as ``s3://BUCKET/KEY`` (a key once per version). Raises
    ``ReplicationError`` when the SDK is missing or storage refuses; what was
    deleted before the refusal stays deleted, and a retry finishes the job.
    """
    store = ObjectStoreCredentials.from_env() if credentials is None else credentials
    location = s3_location(url, store)
    client = _client(location, store)
    prefix = location.prefix + "/"
    deleted: list[str] = []
    try:
        keys = [item["Key"] for item in _objects(client, location, prefix)]
        deleted += _delete(client, location, [{"Key": key} for key in keys])
        deleted += _delete(client, location, _versions(client, location, prefix))
    except Exception as exc:  # botocore's errors share no base we can name without importing it
        if isinstance(exc, ReplicationError):
            raise
        raise ReplicationError(
            f"deleting the replica {redact(url)} failed after {len(deleted)} object(s): {exc}; "
            f"retry (what was deleted stays deleted), or delete s3://{location.bucket}/{prefix} "
            f"by hand."
        ) from exc
    return deleted


def _client(location: S3Location, store: ObjectStoreCredentials) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ReplicationError(
            "erasing an s3:// replica needs boto3: pip install 'circuitforge-core[replication]'."
        ) from exc
    credentials: dict[str, str] = {}
    if store.access_key_id and store.secret_access_key:  # else the SDK's own chain
        credentials = {
            "aws_access_key_id": store.access_key_id,
            "aws_secret_access_key": store.secret_access_key,
        }
        if store.session_token:
            credentials["aws_session_token"] = store.session_token
    config = Config(
        s3={"addressing_style": "path" if location.path_style else "auto"},
        retries={"max_attempts": 5, "mode": "standard"},
        # S3-compatible stores differ in which checksums they accept; send them only
        # where the API requires one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=location.endpoint,
        region_name=location.region or store.region or "us-east-1",
        verify=location.verify,
        config=config,
        **credentials,
    )


def _objects(client: Any, location: S3Location, prefix: str) -> Iterator[Any]:
    """Every object under ``prefix``, page after page."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def _versions(client: Any, location: S3Location, prefix: str) -> list[dict[str, str]]:
    """Old versions and delete markers left under ``prefix`` (a versioned bucket)."""
    paginator = client.get_paginator("list_object_versions")
    found = []
    try:
        for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                found.append({"Key": item["Key"], "VersionId": item["VersionId"]})
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in {"NotImplemented", "AccessDenied", "MethodNotAllowed"}:
            return []  # a store without versions, or no right to list them: nothing more to do
        raise
    return found


def _delete(client: Any, location: S3Location, objects: list[dict[str, str]]) -> list[str]:
    deleted: list[str] = []
    for start in range(0, len(objects), _BATCH):
        batch = objects[start : start + _BATCH]
        answer = client.delete_objects(
            Bucket=location.bucket, Delete={"Objects": batch, "Quiet": False}
        )
        if errors := answer.get("Errors"):
            first = errors[0]
            raise ReplicationError(
                f"the storage refused to delete {len(errors)} object(s) of "
                f"s3://{location.bucket}/{location.prefix}/, e.g. {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}"
            )
        deleted += [f"s3://{location.bucket}/{item['Key']}" for item in answer.get("Deleted", [])]
    return deleted
