"""Publishes readings and reads results through the platform's public API,
with a client generated from the gateway's OpenAPI document (see README.md).

Usage: python publish_and_read.py <base url> <api key> [<CA file>]
Exits non-zero, saying why, when the API does not answer as documented.
"""

import datetime
import sys
import uuid

from platform_api import AuthenticatedClient
from platform_api.api.platform import status
from platform_api.api.readings import publish
from platform_api.api.results import list_
from platform_api.models import Problem, PublishIn, PublishOut, ReadingIn, ResultsOut


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def main():
    base_url, key = sys.argv[1], sys.argv[2]
    verify = sys.argv[3] if len(sys.argv) > 3 else True
    client = AuthenticatedClient(base_url=base_url, token=key, verify_ssl=verify)
    with client as client:
        state = status.sync(client=client)
        print(f"status: serving={state.serving}")

        now = datetime.datetime.now(datetime.timezone.utc)
        run = uuid.uuid4().hex[:8]
        readings = [
            ReadingIn(
                event_id=f"py-{run}-{i}",
                device_id="python-client",
                metric="temperature_c",
                value=20.0 + i,
                observed_at=now,
            )
            for i in range(3)
        ]
        answer = publish.sync(client=client, body=PublishIn(readings=readings))
        if not isinstance(answer, PublishOut):
            fail(f"publish answered {answer}")
        print(f"published: accepted={answer.accepted} duplicates={answer.duplicates}")
        if answer.accepted != 3:
            fail("three new readings were not all accepted")

        again = publish.sync(client=client, body=PublishIn(readings=readings))
        if not isinstance(again, PublishOut) or again.duplicates != 3:
            fail(f"a redelivery was not recognised as duplicates: {again}")
        print(f"redelivered: duplicates={again.duplicates}")

        # Another tenant's id in the body is refused, naming the field.
        foreign = ReadingIn(
            event_id=f"py-{run}-x",
            device_id="python-client",
            metric="temperature_c",
            value=1.0,
            observed_at=now,
            tenant_id="someone-else",
        )
        refused = publish.sync_detailed(client=client, body=PublishIn(readings=[foreign]))
        problem = refused.parsed
        if refused.status_code != 403 or not isinstance(problem, Problem):
            fail(f"another tenant's reading: {refused.status_code} {refused.content!r}")
        print(f"another tenant's reading: {refused.status_code} {problem.errors[0].field}")

        page = list_.sync(client=client, page_size=10)
        if not isinstance(page, ResultsOut):
            fail(f"results answered {page}")
        print(f"results: {len(page.results)} on the first page")
    print("ok")


if __name__ == "__main__":
    main()
