#!/usr/bin/env python3
"""Time to the first streamed result vs. the whole batch: POSTs N real titles with
`Accept: application/x-ndjson` and prints when the first item line and the summary arrived.
usage: scripts/first-result.py URL [N]"""
import http.client, json, sys, time, urllib.parse

url = urllib.parse.urlparse(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
titles = open(__file__.rsplit("/", 2)[0] + "/data/hn_titles.txt", encoding="utf-8").read().splitlines()[:n]
conn = http.client.HTTPConnection(url.hostname, url.port)
start = time.monotonic()
conn.request("POST", "/classify-batch", json.dumps({"titles": titles}),
             {"content-type": "application/json", "accept": "application/x-ndjson"})
response = conn.getresponse()
first = items = None
count = 0
for raw in response:
    line = json.loads(raw)
    if "done" in line:
        done = time.monotonic() - start
        summary = line
        break
    count += 1
    if first is None:
        first = time.monotonic() - start
print(f"items={count} errors={summary['errors']} first_result_s={first:.3f} all_results_s={done:.3f}")
