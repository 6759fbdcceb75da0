#!/usr/bin/env python3
"""The registry's own cost, for bench/push.sh: store or fetch a set of blobs
with the fewest requests the distribution API allows (POST then PUT with the
digest; GET), JOBS in flight over kept-alive connections, no checks beyond the
status. The blobs are the files in DIR, each named by its sha256 hex.

  oci_blobs.py put HOST:PORT REPO DIR JOBS
  oci_blobs.py get HOST:PORT REPO DIR JOBS
"""

import http.client
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

local = threading.local()


def conn(addr):
    if not hasattr(local, "conn"):
        host, port = addr.rsplit(":", 1)
        local.conn = http.client.HTTPConnection(host, int(port))
    return local.conn


def request(addr, method, path, body=None, headers=None):
    c = conn(addr)
    c.request(method, path, body=body, headers=headers or {})
    res = c.getresponse()
    data = res.read()
    if res.status >= 300:
        sys.exit("%s %s: %d %s" % (method, path, res.status, data[:200]))
    return res, data


def put(addr, repo, path):
    with open(path, "rb") as f:
        body = f.read()
    res, _ = request(addr, "POST", "/v2/%s/blobs/uploads/" % repo, headers={"Content-Length": "0"})
    location = res.getheader("Location").split("://", 1)[-1]
    location = location[location.index("/"):] if not location.startswith("/") else location
    sep = "&" if "?" in location else "?"
    request(addr, "PUT", "%s%sdigest=sha256:%s" % (location, sep, os.path.basename(path)), body,
            {"Content-Type": "application/octet-stream"})


def get(addr, repo, path):
    request(addr, "GET", "/v2/%s/blobs/sha256:%s" % (repo, os.path.basename(path)))


def main():
    if len(sys.argv) != 6 or sys.argv[1] not in ("put", "get"):
        sys.exit(__doc__)
    op, addr, repo, directory, jobs = sys.argv[1:]
    fn = put if op == "put" else get
    paths = [os.path.join(directory, name) for name in sorted(os.listdir(directory))]
    with ThreadPoolExecutor(int(jobs)) as pool:
        list(pool.map(lambda p: fn(addr, repo, p), paths))


if __name__ == "__main__":
    main()
