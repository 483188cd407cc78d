#!/usr/bin/env python3
"""Builds deploy/demo/sample/ from the real CloudTrail records in ../shared/data/cloudtrail.

Every record is a real one from the shared data; the only changes are listed beside each file
(replicated with shifted times to form a burst, or a bucket renamed to the demo's bucket).
Run from the repository root: python3 deploy/demo/make-sample.py [SHARED_DATA_DIR]
"""
import copy
import datetime
import json
import os
import shutil
import sys

here = os.path.dirname(os.path.abspath(__file__))
data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "..", "shared", "data", "cloudtrail")
out = os.path.join(here, "sample")
os.makedirs(out, exist_ok=True)

panther = os.path.join(data, "panther-analysis")
rules = [json.loads(line) for line in open(os.path.join(panther, "panther_cloudtrail_rule_tests.jsonl"))]


def rule_event(rule_id, expected, event_name):
    for r in rules:
        if r["rule_id"] == rule_id and r["expected_result"] == expected and r["event"].get("eventName") == event_name:
            return copy.deepcopy(r["event"])
    raise SystemExit(f"no {rule_id} {event_name} record in the shared data")


def write(name, records, note):
    with open(os.path.join(out, name), "w") as f:
        json.dump({"Records": records}, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{name}: {len(records)} records — {note}")


# 1. The root-account takeover timeline, as is.
for name in ["compromised-root-creds_victim_cloudtrail.json", "compromised-root-creds_attacker_cloudtrail.json"]:
    shutil.copy(os.path.join(panther, name), os.path.join(out, "01-" + name))
    print(f"01-{name}: copied unchanged")

# 2. A brute-force burst: Panther's failed console sign-in (Standard.BruteForceByUser),
#    six times, one minute apart (eventID made unique per copy).
failure = rule_event("Standard.BruteForceByUser", True, "ConsoleLogin")
start = datetime.datetime(2020, 11, 2, 9, 0, 0)
burst = []
for i in range(6):
    r = copy.deepcopy(failure)
    r["eventTime"] = (start + datetime.timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r["eventID"] = f"{r.get('eventID', 'brute')}-{i}"
    burst.append(r)
write("02-signin-failures.json", burst, "BruteForceByUser failure x6, 1 minute apart")

# 3. A bucket made public: Panther's ResourceMadePublic PutBucketPolicy, bucket renamed to the
#    demo bucket; and a public-access block removed on a bucket the demo protects.
public = rule_event("AWS.CloudTrail.ResourceMadePublic", True, "PutBucketPolicy")
public["requestParameters"]["bucketName"] = "trailguard-demo-public"
public["eventTime"] = "2020-11-02T09:10:00Z"
block = rule_event("AWS.S3.DeletePublicAccessBlock", True, "DeleteBucketPublicAccessBlock")
write("03-bucket-made-public.json", [public, block], "PutBucketPolicy (bucket renamed) and DeleteBucketPublicAccessBlock")

# 4. CloudTrail logging stopped (AWS.CloudTrail.Stopped), as is.
write("04-stop-logging.json", [rule_event("AWS.CloudTrail.Stopped", True, "StopLogging")], "StopLogging, unchanged")

shutil.copy(os.path.join(data, "README.md"), os.path.join(out, "DATA-README.md"))
