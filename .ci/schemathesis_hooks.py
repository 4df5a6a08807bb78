"""schemathesis hooks for .ci/api-checks (loaded through SCHEMATHESIS_HOOKS).

POST /v1/readings/stream takes NDJSON: its schema describes one line (a
reading), and schemathesis has no serializer for application/x-ndjson.
Each generated value is sent as one JSON line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if value is None:
        return None
    return (json.dumps(value) + "\n").encode()
