"""Signs requests with botocore's SigV4 signers, an implementation independent of Meridian's.

Reads a JSON list of requests on stdin and writes the signed forms to stdout:
  in:  [{"method", "url", "headers": {...}, "body": "...", "access_key", "secret_key",
         "region", "service", "presign": false, "expires": 300, "skew_seconds": 0}]
  out: [{"url": "...", "headers": {...}}]
`skew_seconds` moves the signer's clock (to make requests outside the time window).
"""
import datetime
import json
import sys
from unittest import mock

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def clock(skew):
    real = datetime.datetime

    class Skewed(real):
        @classmethod
        def utcnow(cls):
            return real.utcnow() + datetime.timedelta(seconds=skew)

        @classmethod
        def now(cls, tz=None):
            return real.now(tz) + datetime.timedelta(seconds=skew)

    return Skewed


def sign(spec):
    credentials = Credentials(spec["access_key"], spec["secret_key"])
    request = AWSRequest(
        method=spec["method"],
        url=spec["url"],
        headers=spec.get("headers", {}),
        data=spec.get("body", "").encode(),
    )
    if spec.get("presign"):
        signer = SigV4QueryAuth(credentials, spec["service"], spec["region"], expires=spec.get("expires", 300))
    else:
        signer = SigV4Auth(credentials, spec["service"], spec["region"])
    with mock.patch("botocore.auth.datetime.datetime", clock(spec.get("skew_seconds", 0))):
        signer.add_auth(request)
    prepared = request.prepare()
    return {"url": prepared.url, "headers": dict(prepared.headers.items())}


if __name__ == "__main__":
    print(json.dumps([sign(s) for s in json.load(sys.stdin)]))
